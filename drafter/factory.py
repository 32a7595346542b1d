"""One place that turns a draft spec into a drafter:
``ngram`` (prompt lookup), ``ngram+MODEL`` (prompt lookup first, else MODEL), or ``MODEL``:
``smollm2-feature`` (the shipped feature-level draft) or a feature-draft directory,
``smollm2-draft`` (the distilled draft), ``SPEC:layers=N`` or a Hugging Face directory."""

from __future__ import annotations

from pathlib import Path

from drafter.feature_model import is_feature_draft
from specgrove.compute import on_compute
from specgrove.config import SHIPPED_FEATURE_DRAFT

LOOKUP_PREFIX = "ngram+"
SHIPPED_FEATURE_NAME = "smollm2-feature"  # the feature-level draft shipped in the package


def make_drafter(spec: str, target, cache_dir: Path, loaded: dict | None = None):
    """(drafter, draft CausalLM or None). `target` needs only vocab_size, vocab_hash and name
    (a TextCodec will do): a draft with another tokenizer is refused. Built on the compute
    thread (specgrove.compute), as models load."""
    return on_compute(_make_drafter, spec, target, cache_dir, loaded)


def _make_drafter(spec: str, target, cache_dir: Path, loaded: dict | None):
    from drafter.tree_growth import ModelDrafter
    from drafter.ngram import NgramDrafter
    from specgrove.models import check_same_vocabulary, load_model

    if spec == "ngram":
        return NgramDrafter(target.vocab_size), None
    lookup = spec.startswith(LOOKUP_PREFIX)
    name = spec[len(LOOKUP_PREFIX):] if lookup else spec
    path = SHIPPED_FEATURE_DRAFT if name == SHIPPED_FEATURE_NAME else Path(name).expanduser()
    if is_feature_draft(path):
        return _feature_drafter(path, name, target, cache_dir, loaded, lookup)
    model = load_model(name, cache_dir, loaded)
    check_same_vocabulary(target, model)
    return ModelDrafter(model, lookup=lookup), model


def _feature_drafter(path: Path, name: str, target, cache_dir: Path, loaded: dict | None, lookup: bool):
    """A feature draft runs on its target's weights (embeddings here; features from the verifier)."""
    from drafter.feature_model import FeatureDraftConfig
    from drafter.feature_sequence import load_feature_drafter
    from specgrove.errors import VocabularyMismatch
    from specgrove.models import load_model

    config = FeatureDraftConfig.read(path)
    if config.target_vocab_hash != target.vocab_hash:
        raise VocabularyMismatch(f"feature draft {name!r} was trained for another tokenizer than {target.name}'s")
    base = load_model(config.target, cache_dir, loaded)
    drafter = load_feature_drafter(path, base.model, name, lookup=lookup)
    return drafter, drafter.model


def model_spec(spec: str) -> str | None:
    """The draft model part of a spec (None for plain ``ngram``)."""
    if spec == "ngram":
        return None
    return spec[len(LOOKUP_PREFIX):] if spec.startswith(LOOKUP_PREFIX) else spec
