"""Identity and onboarding service of a state-wide Matrix network."""
