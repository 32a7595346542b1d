"""Structured output: a grammar (JSON schema, any JSON, or a regex) that masks the target's p and
the draft's q at every node of a round, through llguidance.

Constrained sampling, the distribution the output follows: at each step the logits of the tokens
the grammar forbids after the tokens so far are set to −inf, then the usual warp (temperature,
top-k, top-p) applies. Under speculation every row of a round (each chain position, each tree
node) is masked by the grammar state after *that row's own path* (the confirmed output plus the
node's ancestors), so the verifier's p is exactly constrained sampling's, and the draft's q is
masked the same way (drafts stay valid; exactness needs only q to be what the draft sampled
from). A path the grammar cannot take (a prompt-lookup token it forbids) leaves the rows below it
unmasked: the target gives that token p = 0, so they are never reached.

Why llguidance (measured with SmolLM2's 49,152-token vocabulary: docs/bench/grammar-engines.json,
from docs/bench/grammar_engines.py):
either engine's mask costs a small fraction of one target pass, and llguidance's wheel is small
with no dependencies, where xgrammar pulls triton (about 1 GB) on this platform.
Rollback is native, which a tree's depth-first walk needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from specgrove.errors import InvalidArgument

MAX_GRAMMAR_CHARS = 65536


@dataclass(frozen=True)
class GrammarSpec:
    kind: str  # "json_schema" | "json_object" | "regex"
    source: str  # the schema as JSON text, or the regex ("" for json_object)

    @classmethod
    def json_schema(cls, schema: object) -> "GrammarSpec":
        if not isinstance(schema, (dict, bool)):
            raise InvalidArgument("response_format.json_schema.schema", "must be a JSON schema object")
        return cls("json_schema", json.dumps(schema, sort_keys=True))

    @classmethod
    def json_object(cls) -> "GrammarSpec":
        return cls("json_object", "")

    @classmethod
    def regex(cls, pattern: object) -> "GrammarSpec":
        if not isinstance(pattern, str) or not pattern:
            raise InvalidArgument("structured_outputs.regex", "must be a non-empty string")
        return cls("regex", pattern)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "source": self.source})

    @classmethod
    def from_json(cls, text: str) -> "GrammarSpec":
        raw = json.loads(text)
        return cls(raw["kind"], raw["source"])

    def llguidance_grammar(self) -> str:
        import llguidance

        if self.kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(self.source)
        schema = json.loads(self.source) if self.kind == "json_schema" else {"type": "object"}
        return llguidance.LLMatcher.grammar_from_json_schema(schema)

    def validate(self) -> "GrammarSpec":
        """Raise InvalidArgument when the grammar is too long or does not compile."""
        import llguidance

        if self.kind not in ("json_schema", "json_object", "regex"):
            raise InvalidArgument("grammar", f"unknown kind {self.kind!r}")
        if len(self.source) > MAX_GRAMMAR_CHARS:
            raise InvalidArgument("grammar", f"at most {MAX_GRAMMAR_CHARS} characters, got {len(self.source)}")
        try:
            grammar = self.llguidance_grammar()
        except (ValueError, TypeError, RuntimeError) as exc:
            raise InvalidArgument("grammar", f"does not compile: {exc}") from exc
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
        if is_error:
            raise InvalidArgument("grammar", f"does not compile: {'; '.join(map(str, messages))}")
        return self


def grammar_tokenizer(tokenizer, vocab_size: int):
    """llguidance's view of a Hugging Face tokenizer, built once per tokenizer (building it for a
    49k-token vocabulary is not free). Tokenizers whose decoder llguidance cannot read (the tests'
    character tokenizer) are described token by token instead."""
    cached = getattr(tokenizer, "_specgrove_llguidance", None)
    if cached is None or cached[0] != vocab_size:
        import llguidance
        import llguidance.hf

        try:
            built = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        except ValueError:
            built = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_TokenList(tokenizer, vocab_size)),
                                           n_vocab=vocab_size)
        cached = (vocab_size, built)
        tokenizer._specgrove_llguidance = cached
    return cached[1]


class _TokenList:
    """A tokenizer as llguidance's TokenizerWrapper reads it: each token's bytes (special tokens
    marked with a leading 0xFF, as llguidance does), EOS/BOS ids and an encoder."""

    def __init__(self, tokenizer, vocab_size: int):
        special = set(tokenizer.all_special_ids)
        self.eos_token_id, self.bos_token_id = tokenizer.eos_token_id, tokenizer.bos_token_id
        self.special_token_ids = sorted(special)
        self.tokens = [b"\xff" + tokenizer.convert_ids_to_tokens(i).encode() if i in special
                       else tokenizer.decode([i]).encode() for i in range(vocab_size)]
        self._encode = tokenizer.encode

    def __call__(self, text: str) -> list[int]:
        return self._encode(text, add_special_tokens=False)


class Constraint:
    """One generation's grammar state. ``start`` is where the output begins in the context (the
    prompt's length): the grammar reads context[start:]."""

    def __init__(self, spec: GrammarSpec, tokenizer, vocab_size: int, start: int):
        import llguidance

        self.spec, self.start, self.vocab_size = spec, start, vocab_size
        self._matcher = llguidance.LLMatcher(grammar_tokenizer(tokenizer, vocab_size), spec.llguidance_grammar())
        self._consumed: list[int] = []
        # the matcher's first mask builds its lexer (seconds for a large vocabulary): build it here,
        # on the thread that opens the session, not on the model's compute thread (specgrove.compute)
        import llguidance.torch

        llguidance.torch.fill_next_token_bitmask(self._matcher, llguidance.torch.allocate_token_bitmask(1, vocab_size), 0)

    def _sync(self, context: list[int]) -> None:
        """Move the matcher to the state after context[start:] (rolling back what differs)."""
        output = context[self.start:]
        same = 0
        for a, b in zip(self._consumed, output):
            if a != b:
                break
            same += 1
        if same < len(self._consumed):
            self._matcher.rollback(len(self._consumed) - same)
            del self._consumed[same:]
        new = output[same:]
        taken = self._matcher.try_consume_tokens(new) if new else 0
        self._consumed += new[:taken]
        if taken < len(new):
            raise InvalidArgument("grammar", f"the confirmed output breaks the grammar at token {new[taken]}")

    def mask_rows(self, logits: torch.Tensor, context: list[int], paths: list[list[int]]) -> torch.Tensor:
        """logits [R, V] of rows whose paths (tokens after ``context``) are ``paths`` -> the same
        logits with each row's forbidden tokens at −inf (a row on a path the grammar cannot take
        stays as it is: that path is rejected before the row is read)."""
        import llguidance.torch

        assert logits.ndim == 2 and logits.shape[0] == len(paths), (logits.shape, len(paths))
        self._sync(context)
        bitmask = llguidance.torch.allocate_token_bitmask(len(paths), self.vocab_size)
        valid = torch.ones(len(paths), dtype=torch.bool)
        for row, path in enumerate(paths):
            taken = self._matcher.try_consume_tokens(path) if path else 0  # stops (no error) at a forbidden token
            if taken == len(path):
                llguidance.torch.fill_next_token_bitmask(self._matcher, bitmask, row)
            else:
                valid[row] = False
            if taken:
                self._matcher.rollback(taken)
        masked = logits.float().clone()
        rows = masked[valid]
        llguidance.torch.apply_token_bitmask_inplace(rows, bitmask[valid])
        masked[valid] = rows
        return masked


def constrain(logits: torch.Tensor, constraint: "Constraint | None", context: list[int],
              paths: list[list[int]]) -> torch.Tensor:
    """``constraint.mask_rows`` when there is a grammar; the logits unchanged otherwise."""
    return logits if constraint is None else constraint.mask_rows(logits, context, paths)


def for_session(grammar: GrammarSpec | None, tokenizer, vocab_size: int, start: int) -> Constraint | None:
    """A generation's constraint (None without a grammar, or without a tokenizer to read it with)."""
    if grammar is None or tokenizer is None:
        return None
    return Constraint(grammar, tokenizer, vocab_size, start)
