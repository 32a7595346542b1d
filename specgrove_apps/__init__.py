"""The applications on top of every layer: the ``specgrove`` command line, the gRPC client,
bench, calibrate, engine assembly and draft evaluation. They may import specgrove/, drafter/,
verifier/, orchestrator/ and services/; nothing in those packages imports this one."""


def print_report(report: dict, path=None) -> None:
    """Print a JSON report, and write it to ``path`` (a Path) when given."""
    import json

    text = json.dumps(report, indent=2)
    print(text)
    if path:
        path.write_text(text + "\n")
