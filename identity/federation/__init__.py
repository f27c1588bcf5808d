"""Calls to homeservers (filled in by its owner): discovery, safe HTTP, X-Matrix."""
