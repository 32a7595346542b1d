"""Transport: the gRPC servicers of the three roles (thin: wire -> domain -> one worker call), the
orchestrator's OpenAI-compatible HTTP API, interceptors (auth, tracing, limits), and starting the
roles as processes (``roles``) or on Ray (``ray_up``)."""
