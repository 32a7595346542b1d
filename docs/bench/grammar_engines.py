"""Mask cost of llguidance and xgrammar on SmolLM2's tokenizer (what chose specgrove.grammar's engine).

Run: .venv/bin/pip install xgrammar && .venv/bin/python docs/bench/grammar_engines.py
(xgrammar pulls triton, ~1 GB, on this platform; SpecGrove itself needs only llguidance.)
"""

import json
import time

import numpy as np

from specgrove.config import default_cache_dir
from specgrove.models import load_text_codec

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
          "tags": {"type": "array", "items": {"type": "string"}}},
          "required": ["name", "age", "tags"], "additionalProperties": False}


def main() -> None:
    codec = load_text_codec("smollm2", default_cache_dir())
    ids = codec.encode(json.dumps({"name": "Ada Lovelace", "age": 36, "tags": ["math", "poet"]}))
    out = {"vocab_size": codec.vocab_size, "tokens_walked": len(ids)}

    import llguidance
    import llguidance.hf
    import llguidance.torch

    t0 = time.perf_counter()
    tok = llguidance.hf.from_tokenizer(codec.tokenizer, n_vocab=codec.vocab_size)
    t1 = time.perf_counter()
    matcher = llguidance.LLMatcher(tok, llguidance.LLMatcher.grammar_from_json_schema(SCHEMA))
    t2 = time.perf_counter()
    bitmask, times = llguidance.torch.allocate_token_bitmask(1, codec.vocab_size), []
    for token in ids:
        start = time.perf_counter()
        llguidance.torch.fill_next_token_bitmask(matcher, bitmask, 0)
        times.append(time.perf_counter() - start)
        assert matcher.consume_token(token)
    out["llguidance"] = {"tokenizer_s": t1 - t0, "compile_s": t2 - t1, "mask_mean_ms": 1e3 * np.mean(times),
                         "mask_max_ms": 1e3 * max(times)}

    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(codec.tokenizer, vocab_size=codec.vocab_size)
    compiler = xgr.GrammarCompiler(info)
    t1 = time.perf_counter()
    xmatcher = xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(SCHEMA)), max_rollback_tokens=64)
    t2 = time.perf_counter()
    bitmask, times = xgr.allocate_token_bitmask(1, info.vocab_size), []
    for token in ids:
        start = time.perf_counter()
        xmatcher.fill_next_token_bitmask(bitmask)
        times.append(time.perf_counter() - start)
        assert xmatcher.accept_token(token)
    out["xgrammar"] = {"tokenizer_s": t1 - t0, "compile_s": t2 - t1, "mask_mean_ms": 1e3 * np.mean(times),
                       "mask_max_ms": 1e3 * max(times)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
