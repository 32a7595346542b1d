"""The committed gRPC stubs match the protos (regenerate with `make protos`)."""

from pathlib import Path

from specgrove.protogen import ROOT, generate


def test_committed_stubs_are_not_stale(tmp_path: Path):
    fresh = generate(tmp_path)
    assert len(fresh) == 6
    for path in fresh:
        committed = ROOT / "specgrove" / "v1" / path.name
        assert committed.is_file(), f"{committed} missing: run make protos"
        assert committed.read_text() == path.read_text(), f"{committed.name} is stale: run make protos"

