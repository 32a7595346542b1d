"""gRPC servers of the three roles (orchestrator, drafter, verifier); arrives with the distributed pipeline."""
