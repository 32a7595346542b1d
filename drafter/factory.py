"""One place that turns a draft spec into a drafter:
``ngram`` (prompt lookup), ``ngram+MODEL`` (prompt lookup first, else MODEL), or ``MODEL``
(``smollm2-draft``, ``SPEC:layers=N`` or a Hugging Face directory)."""

from __future__ import annotations

from pathlib import Path

LOOKUP_PREFIX = "ngram+"


def make_drafter(spec: str, target, cache_dir: Path, loaded: dict | None = None):
    """(drafter, draft CausalLM or None). `target` needs only vocab_size, vocab_hash and name
    (a TextCodec will do): a draft with another tokenizer is refused."""
    from drafter.model_drafter import ModelDrafter
    from drafter.ngram import NgramDrafter
    from specgrove.models import check_same_vocabulary, load_model

    if spec == "ngram":
        return NgramDrafter(target.vocab_size), None
    lookup = spec.startswith(LOOKUP_PREFIX)
    model = load_model(spec[len(LOOKUP_PREFIX):] if lookup else spec, cache_dir, loaded)
    check_same_vocabulary(target, model)
    return ModelDrafter(model, lookup=lookup), model


def model_spec(spec: str) -> str | None:
    """The draft model part of a spec (None for plain ``ngram``)."""
    if spec == "ngram":
        return None
    return spec[len(LOOKUP_PREFIX):] if spec.startswith(LOOKUP_PREFIX) else spec
