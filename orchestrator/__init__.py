"""Orchestrator: the session loop that alternates drafting and verification."""
