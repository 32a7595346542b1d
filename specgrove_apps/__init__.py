"""The applications on top of every layer: the ``specgrove`` command line, the gRPC client,
bench, calibrate, engine assembly and draft evaluation. They may import specgrove/, drafter/,
verifier/, orchestrator/ and services/; nothing in those packages imports this one."""
