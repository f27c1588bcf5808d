"""End-to-end tests against real peers (a real Synapse) on loopback."""
