"""Orchestrator: the round core (plans, commits, stop rules), tree sizing and the goodput planner,
and the two session loops: in process (``engine``) and over the workers with Redis (``pipeline``)."""
