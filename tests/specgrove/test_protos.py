"""The committed gRPC stubs match the protos (regenerate with `make protos`)."""

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

from specgrove.protogen import ROOT, generate


def test_the_generator_is_the_pinned_one():
    """The stubs embed their generator's version; it is pinned once (pyproject.toml's test extra,
    recorded in requirements.lock), so regenerating gives the same files on any day."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    pins = [r for r in extras if r.startswith("grpcio-tools")]
    assert len(pins) == 1 and re.fullmatch(r"grpcio-tools==[0-9.]+", pins[0]), pins
    pinned = pins[0].split("==")[1]
    stub = (ROOT / "specgrove" / "v1" / "speculate_pb2_grpc.py").read_text()
    assert f"GRPC_GENERATED_VERSION = '{pinned}'" in stub
    assert f"grpcio-tools=={pinned}\n" in (ROOT / "requirements.lock").read_text()
    assert version("grpcio-tools") == pinned, "install from the lock: make install"


def test_committed_stubs_are_not_stale(tmp_path: Path):
    fresh = generate(tmp_path)
    assert len(fresh) == 6
    for path in fresh:
        committed = ROOT / "specgrove" / "v1" / path.name
        assert committed.is_file(), f"{committed} missing: run make protos"
        assert committed.read_text() == path.read_text(), f"{committed.name} is stale: run make protos"
