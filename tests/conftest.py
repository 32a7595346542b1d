"""Shared fixtures: tiny random llama models (fast) and the real SmolLM2 target (slow)."""

import os
from pathlib import Path

import pytest
import torch

# Eager passes in the suite (compiling a pass takes a minute on 2 cores); the compiled runner has
# its own tests, which compile on purpose. Services the tests start inherit this.
os.environ.setdefault("SPECGROVE_COMPILE", "0")

from specgrove.config import default_cache_dir
from specgrove.models import load_model
from specgrove.tiny import UPPER, build_tiny_llama


@pytest.fixture(autouse=True)
def _intra_op_threads(request):
    """Tiny models run on one intra-op thread: on a 2-core machine a second one mostly waits for a
    core (tiny-model tests ran 10-20x slower under load). Tests marked slow (the real model) keep
    their share of the cores: all of them, or one per pytest-xdist worker."""
    before = torch.get_num_threads()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if request.node.get_closest_marker("slow") is None:
        torch.set_num_threads(1)
    elif workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


TINY_FEATURE_TRAIN = dict(chat_prompts=4, code_stubs=4, gen_max_tokens=48, gen_batch=8, corpus_tokens=30000,
                          seq_len=64, batch=8, lr=3e-3, warmup=10, checkpoint_every=50, threads=1)


@pytest.fixture(scope="session")
def tiny_feature_dir(tiny_dir, tmp_path_factory) -> Path:
    """A feature-level draft for the tiny target, trained for 150 steps (seconds on a CPU)."""
    from training.feature import FeatureTrainConfig, run

    root = tmp_path_factory.mktemp("tiny_feature")
    return run(FeatureTrainConfig(target=str(tiny_dir), steps=150, **TINY_FEATURE_TRAIN), root / "run", root / "draft",
               root / "cache")


@pytest.fixture(scope="session")
def tiny_feature_drafter(tiny_feature_dir, tiny_target, tmp_path_factory):
    from drafter.factory import make_drafter

    return make_drafter(str(tiny_feature_dir), tiny_target, tmp_path_factory.mktemp("cache"))[0]
