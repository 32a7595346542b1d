"""Shared fixtures: tiny random llama models (fast) and the real SmolLM2 target (slow)."""

from pathlib import Path

import pytest

from specgrove.config import default_cache_dir
from specgrove.models import load_model
from specgrove.tiny import UPPER, build_tiny_llama


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_target"), seed=0, logit_scale=20.0)


@pytest.fixture(scope="session")
def tiny_target(tiny_dir):
    return load_model(str(tiny_dir), Path("/nonexistent"))


@pytest.fixture(scope="session")
def tiny_draft(tmp_path_factory):
    path = build_tiny_llama(tmp_path_factory.mktemp("tiny_draft"), seed=1, logit_scale=20.0)
    return load_model(str(path), Path("/nonexistent"))


@pytest.fixture(scope="session")
def tiny_upper_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_upper"), seed=2, characters=UPPER)


@pytest.fixture(scope="session")
def smollm2():
    """The real default target, converted from its GGUF into the user cache on first use."""
    return load_model("smollm2", default_cache_dir())
