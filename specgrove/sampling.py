"""Sampling parameters, their validation, and the warping shared by target p and draft q.

Letters follow Chen et al. (2023): **p** is the target's distribution, **q** the draft's.
Both are warped by the same function (temperature, then top-k, then top-p, in fp32) before any
ratio p/q is taken, so speculative output is distributed exactly as warped target sampling.
Temperature 0 means greedy: ``warp`` returns the one-hot of the argmax (first index on ties).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from specgrove.errors import InvalidArgument, OutOfRange
from specgrove.grammar import GrammarSpec
from specgrove.limits import DEFAULT_LIMITS, Limits

MAX_TEMPERATURE = 100.0
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy; > 0 divides the logits
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0  # keep the smallest set whose mass reaches top_p; 1 = off
    seed: int | None = None  # seeds the request's own torch.Generator; None = random
    max_new_tokens: int = 128  # generation stops after this many tokens
    stop_token_ids: tuple[int, ...] = ()  # extra ids that end generation (EOS always does)
    stop: tuple[str, ...] = field(default=())  # strings that end generation, cut from the text
    grammar: GrammarSpec | None = None  # structured output: p and q are masked by it (specgrove.grammar)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self, vocab_size: int | None = None, max_new_tokens_limit: int = 8192,
                 limits: Limits = DEFAULT_LIMITS) -> "SamplingParams":
        """Raise ``InvalidArgument``/``OutOfRange`` naming the first bad field; return self."""
        _check_number("temperature", self.temperature)
        if not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise OutOfRange("temperature", f"must be in [0, {MAX_TEMPERATURE}], got {self.temperature}")
        _check_int("top_k", self.top_k)
        if self.top_k < 0:
            raise OutOfRange("top_k", f"must be >= 0 (0 disables it), got {self.top_k}")
        _check_number("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise OutOfRange("top_p", f"must be in (0, 1] (1 disables it), got {self.top_p}")
        if self.seed is not None:
            _check_int("seed", self.seed)
            if not 0 <= self.seed <= MAX_SEED:
                raise OutOfRange("seed", f"must be in [0, 2**63 - 1], got {self.seed}")
        _check_int("max_new_tokens", self.max_new_tokens)
        if not 1 <= self.max_new_tokens <= max_new_tokens_limit:
            raise OutOfRange(
                "max_new_tokens", f"must be in [1, {max_new_tokens_limit}], got {self.max_new_tokens}"
            )
        for token_id in self.stop_token_ids:
            _check_int("stop_token_ids", token_id)
            if token_id < 0 or (vocab_size is not None and token_id >= vocab_size):
                bound = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
                raise OutOfRange("stop_token_ids", f"each id must be in {bound}, got {token_id}")
        self.check_limits(limits)
        for text in self.stop:
            if not isinstance(text, str) or not text:
                raise InvalidArgument("stop", f"each stop string must be a non-empty string, got {text!r}")
        if self.grammar is not None:
            self.grammar.validate()
        return self

    def check_limits(self, limits: Limits) -> None:
        """The server's limits on stop strings (OutOfRange); ``validate`` applies the defaults, the
        gRPC codec a serving process's own."""
        if len(self.stop) > limits.max_stop_strings:
            raise OutOfRange("stop", f"at most {limits.max_stop_strings} stop strings, got {len(self.stop)}")
        longest = max(map(len, self.stop), default=0)
        if longest > limits.max_stop_string_chars:
            raise OutOfRange("stop", f"each stop string must be at most {limits.max_stop_string_chars} "
                                     f"characters, got {longest}")


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgument(name, f"must be a finite number, got {value!r}")


def _check_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(name, f"must be an integer, got {value!r}")


def warp(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Logits [..., V] -> warped probabilities [..., V] in fp32 (one-hot argmax when greedy)."""
    logits = logits.float()
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    logits = logits / params.temperature
    vocab = logits.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]  # [..., 1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of strictly better tokens
        drop_sorted = mass_before >= params.top_p  # the token that crosses top_p is kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw one token per row of probs [..., V] -> ids [...] (long)."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def make_generator(seed: int | None) -> tuple[torch.Generator, int]:
    """A request's own CPU generator and the seed it was given (drawn at random when None)."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator, seed


def sample_without_replacement(probs: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k distinct tokens from probs [V], in sampling order (Gumbel top-k): [k] long.

    k must not exceed the support (the number of tokens with probability > 0).
    """
    assert probs.ndim == 1, probs.shape
    u = torch.rand(probs.shape, generator=generator).clamp_min(torch.finfo(torch.float32).tiny)
    keys = probs.log() - (-u.log()).log()  # log q + Gumbel noise; −inf where q = 0
    return torch.topk(keys, k).indices


def truncate_top_n(probs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-n support of probs [V], renormalised: (ids [n'] long, probs [n'] fp32), n' ≤ n, no zeros."""
    values, ids = torch.topk(probs, min(n, probs.shape[-1]))
    keep = values > 0
    values, ids = values[keep], ids[keep]
    return ids, values / values.sum()


DRAFT_STREAM, VERIFY_STREAM = 1, 2  # which worker draws from a round's generator


def round_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A generator keyed by (session seed, round, stream). Distributed workers draw each round's
    randomness from it, so a round replayed on another (or a restarted) worker draws the same
    numbers and a seeded request stays reproducible whatever worker serves it."""
    mixed = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB) % (2**63 - 1)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(mixed)
    return generator
