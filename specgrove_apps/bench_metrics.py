"""The benchmark's arithmetic: one timed generation (``Sample``) and the records made from many,
with vLLM's metric names (acceptance length, per-position acceptance rates, TPOT, TTFT)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Sample:
    """One timed generation of one mode on one prompt."""

    prompt: str
    token_ids: list[int]
    elapsed_s: float  # request to last token
    ttft_s: float  # request to first token
    drafted: list[int] = field(default_factory=list)  # per verify round; empty for non-speculative modes
    accepted: list[int] = field(default_factory=list)  # per verify round
    lambdas: list[float] = field(default_factory=list)  # AdaEDL λ per round (adaedl modes only)

    @property
    def tpot_s(self) -> float:
        """Time per output token after the first (vLLM's TPOT)."""
        n = len(self.token_ids)
        return (self.elapsed_s - self.ttft_s) / (n - 1) if n > 1 else 0.0


def per_position_acceptance(drafted: list[int], accepted: list[int]) -> list[float]:
    """vLLM's per-position rates: rounds that accepted at least i+1 tokens / rounds with a draft."""
    drafts = sum(1 for d in drafted if d > 0)
    longest = max(drafted, default=0)
    if drafts == 0:
        return []
    return [sum(1 for a in accepted if a > i) / drafts for i in range(longest)]


def summarise(mode: str, samples: list[Sample], speculative: bool) -> dict:
    """One result record (without the ratios, which need the baseline)."""
    tokens = sum(len(s.token_ids) for s in samples)
    duration = sum(s.elapsed_s for s in samples)
    record = {
        "mode": mode,
        "completed": len(samples),
        "total_output_tokens": tokens,
        "duration_s": round(duration, 4),
        "output_throughput": round(tokens / duration, 3) if duration > 0 else 0.0,
        "mean_tpot_ms": round(1000 * statistics.fmean(s.tpot_s for s in samples), 3),
        "median_tpot_ms": round(1000 * statistics.median(s.tpot_s for s in samples), 3),
        "mean_ttft_ms": round(1000 * statistics.fmean(s.ttft_s for s in samples), 3),
        "median_ttft_ms": round(1000 * statistics.median(s.ttft_s for s in samples), 3),
    }
    if speculative:
        drafted, accepted = _rounds_of(samples)
        rounds = len(drafted)
        record.update(
            spec_decode_num_drafts=_drafts(drafted),
            spec_decode_num_draft_tokens=sum(drafted),
            spec_decode_num_accepted_tokens=sum(accepted),
            spec_decode_acceptance_length=_acceptance_length(drafted, accepted),
            tokens_per_round=round((sum(accepted) + rounds) / rounds, 4) if rounds else None,  # K = 0 rounds too
            spec_decode_acceptance_rate=round(sum(accepted) / sum(drafted), 4) if sum(drafted) else None,
            spec_decode_per_position_acceptance_rates=[round(r, 4) for r in per_position_acceptance(drafted, accepted)],
            mean_draft_len=round(sum(drafted) / rounds, 4) if rounds else None,
            mean_adaedl_lambda=_mean([lam for s in samples for lam in s.lambdas]),
        )
    else:
        record.update(
            spec_decode_num_drafts=None,
            spec_decode_num_draft_tokens=None,
            spec_decode_num_accepted_tokens=None,
            spec_decode_acceptance_length=None,
            tokens_per_round=None,
            spec_decode_acceptance_rate=None,
            spec_decode_per_position_acceptance_rates=None,
        )
    return record


def _rounds_of(samples: list[Sample]) -> tuple[list[int], list[int]]:
    """Every round's draft tokens and accepted tokens, over the samples."""
    return [d for s in samples for d in s.drafted], [a for s in samples for a in s.accepted]


def _drafts(drafted: list[int]) -> int:
    """The rounds that drafted (K = 0 rounds are plain steps)."""
    return sum(1 for d in drafted if d > 0)


def _acceptance_length(drafted: list[int], accepted: list[int]) -> float | None:
    """vLLM's acceptance length: 1 + accepted tokens per round that drafted."""
    drafts = _drafts(drafted)
    return round(1 + sum(accepted) / drafts, 4) if drafts else None


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def add_ratios(records: list[dict], baseline: str = "ar") -> list[dict]:
    """speedup_vs_ar = output_throughput / the baseline's (None when there is no baseline)."""
    base = next((r for r in records if r["mode"] == baseline), None)
    for record in records:
        ok = base is not None and base["output_throughput"] > 0
        record["speedup_vs_ar"] = round(record["output_throughput"] / base["output_throughput"], 4) if ok else None
    return records


def greedy_agreement(samples: dict[str, list[Sample]], baseline: str = "ar") -> dict[str, float]:
    """Per mode, the fraction of prompts whose tokens equal the baseline's (meaningful at T = 0)."""
    base = samples.get(baseline)
    if not base:
        return {}
    return {
        mode: sum(a.token_ids == b.token_ids for a, b in zip(runs, base)) / len(base) for mode, runs in samples.items()
    }


def summarise_concurrent(mode: str, concurrency: int, samples: list[Sample], wall_s: float) -> dict:
    """A load record: ``concurrency`` clients at once (vLLM bench's ``--max-concurrency``); the
    aggregate throughput divides every output token by the wall time of the whole run."""
    tokens = sum(len(s.token_ids) for s in samples)

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    ttft, tpot = [s.ttft_s for s in samples], [s.tpot_s for s in samples]
    return {"mode": mode, "concurrency": concurrency, "completed": len(samples), "total_output_tokens": tokens,
            "duration_s": round(wall_s, 4), "output_throughput": round(tokens / wall_s, 3) if wall_s > 0 else 0.0,
            "p50_ttft_ms": pct(ttft, 0.5), "p99_ttft_ms": pct(ttft, 0.99),
            "p50_tpot_ms": pct(tpot, 0.5), "p99_tpot_ms": pct(tpot, 0.99), **_rounds_record(samples)}


def _rounds_record(samples: list[Sample]) -> dict:
    """What a speculative mode's rounds did under this load: the share of rounds that drafted (the
    goodput planner turns chains off when the batch makes them a loss), their mean draft length
    and vLLM's acceptance length; nothing for a mode without rounds."""
    drafted, accepted = _rounds_of(samples)
    if not drafted:
        return {}
    return {"rounds": len(drafted), "drafting_share": round(_drafts(drafted) / len(drafted), 4),
            "mean_draft_len": round(sum(drafted) / len(drafted), 4),
            "spec_decode_acceptance_length": _acceptance_length(drafted, accepted)}
