"""Assemble an engine from a few typed choices: models, mode, draft length or tree plan."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from orchestrator.stop_policy import make_policy
from specgrove.config import DEFAULT_DRAFT, DEFAULT_TARGET
from specgrove.errors import InvalidArgument

log = logging.getLogger(__name__)

MODES = ("ar", "chain", "tree")


@dataclass(frozen=True)
class EngineSpec:
    mode: str = "chain"  # ar | chain | tree
    target: str = DEFAULT_TARGET  # 'smollm2' or a model directory
    draft: str | None = None  # 'ngram', 'SPEC:layers=N' or a model directory; None = default
    draft_len: int = 4  # chain: K draft tokens per round
    adaptive: bool = False  # chain: the goodput planner picks each round's K in 0 .. draft_len
    tree_budget: int | None = None  # tree: pin the size (nodes); None = the planner's choice
    tree_depth: int | None = None  # tree: pin the depth; None = the planner's choice
    profile: str | None = None  # tree: calibration profile JSON; None = the cached one (made if missing)
    greedy: bool = True  # which measured acceptance vector the planner uses
    stop_policy: str = "adaedl"  # chain/tree draft length: adaedl | static | max-confidence | heuristic
    adaedl_gamma: float = 0.2  # AdaEDL entropy scale γ
    adaedl_lambda: float = 0.5  # AdaEDL initial threshold λ


@dataclass
class Assembled:
    target: object  # CausalLM
    engine: object  # SpeculativeEngine
    description: str  # what was built, e.g. "tree m=16 d=5 (planner)"


def assemble(spec: EngineSpec, cache_dir: Path, loaded: dict | None = None) -> Assembled:
    """Build the engine for spec; `loaded` (model spec -> CausalLM) shares models across calls."""
    from drafter.factory import make_drafter
    from drafter.ngram import NgramDrafter
    from orchestrator.engine import SpeculativeEngine
    from orchestrator.rounds import Speculation
    from specgrove.models import load_model

    if spec.mode not in MODES:
        raise InvalidArgument("mode", f"must be one of {', '.join(MODES)}, got {spec.mode!r}")
    make_policy(spec.stop_policy, 1, spec.adaedl_gamma, spec.adaedl_lambda)  # validate before loading

    def policies(max_len: int):
        return make_policy(spec.stop_policy, max_len, spec.adaedl_gamma, spec.adaedl_lambda)

    target = load_model(spec.target, cache_dir, loaded)
    if spec.mode == "ar":
        return Assembled(target, SpeculativeEngine(target), "ar")
    draft_spec = spec.draft or DEFAULT_DRAFT
    chain = Speculation("chain", spec.draft_len, adaptive=spec.adaptive)
    sizing = "goodput" if spec.adaptive else "pinned"
    if draft_spec == "ngram":
        if spec.mode == "tree":
            raise InvalidArgument("draft", "tree mode needs a draft model (--draft DIR or smollm2:layers=N); "
                                  "the n-gram drafter proposes a single chain")
        return Assembled(target, SpeculativeEngine(target, NgramDrafter(target.vocab_size), speculation=chain),
                         f"chain K<={spec.draft_len} ({sizing}) ngram")  # stop rules never fire on its one-hot q
    drafter, draft = make_drafter(draft_spec, target, cache_dir, loaded)
    if spec.mode == "chain":
        engine = SpeculativeEngine(target, drafter, speculation=chain, policy_factory=policies)
        return Assembled(target, engine, f"chain K<={spec.draft_len} ({sizing}) {spec.stop_policy} {draft.name}")
    return _assemble_tree(spec, cache_dir, target, draft, drafter, policies)


def _assemble_tree(spec: EngineSpec, cache_dir: Path, target, draft, drafter, policies) -> Assembled:
    from orchestrator.engine import SpeculativeEngine
    from orchestrator.tree_sizing import CostProfile, plan_tree
    from orchestrator.acceptance import AcceptanceStats
    from orchestrator.round_planner import LinkStats
    from orchestrator.rounds import Speculation
    from specgrove_apps.calibrate import calibrate, profile_path

    path = Path(spec.profile) if spec.profile else profile_path(cache_dir, target.name, draft.name)
    if path.is_file():
        profile = CostProfile.from_json(path.read_text())
    elif spec.profile:
        raise InvalidArgument("profile", f"no calibration profile at {path}")
    else:
        log.warning("no calibration profile for %s + %s: measuring costs now (quick) into %s; "
                    "run `specgrove calibrate` for measured acceptance", target.name, draft.name, path)
        profile = calibrate(target, draft, drafter, quick=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(profile.to_json())
    acceptance = profile.acceptance["greedy" if spec.greedy else "sampled"]
    plan = plan_tree(profile, acceptance, fixed_size=spec.tree_budget, fixed_depth=spec.tree_depth)
    if plan.size == 0:
        log.warning("the planner predicts plain decoding is fastest here (%.1f tok/s); it will decode with "
                    "K = 0 and probe a small tree now and then", plan.tokens_per_s)
    how = "pinned" if spec.tree_budget or spec.tree_depth else "planner"
    speculation = Speculation("tree", tree_budget=spec.tree_budget, tree_depth=spec.tree_depth)
    engine = SpeculativeEngine(target, drafter, policy_factory=policies, speculation=speculation,
                               link=LinkStats.from_profile(profile), acceptance=AcceptanceStats(acceptance))
    return Assembled(target, engine, f"tree m={plan.size} d={plan.depth} ({how}, predicted {plan.tokens_per_s:.1f} "
                                     f"tok/s, re-planned online) {spec.stop_policy}")
