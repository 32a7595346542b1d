"""The draft commands: ``calibrate`` (costs and acceptance into a profile), ``train-draft`` and
``eval-draft`` (a draft's quality against the target, and its model card)."""

from __future__ import annotations

import json
import os
import sys

from specgrove.config import (DEFAULT_DRAFT, DEFAULT_TARGET, DRAFT_TRAIN_CONFIG, FEATURE_TRAIN_CONFIG, SHIPPED_DRAFT,
                              SHIPPED_FEATURE_DRAFT)
from specgrove.compute import on_compute
from specgrove.errors import SpecGroveError


def cmd_calibrate(args) -> int:
    from drafter.factory import make_drafter
    from specgrove_apps.calibrate import calibrate, profile_path
    from specgrove.models import load_model

    loaded: dict = {}  # a layer-slice draft shares the target's weights
    target = load_model(args.target, args.cache_dir, loaded)
    drafter, draft = make_drafter(args.draft, target, args.cache_dir, loaded)  # refuses another tokenizer
    if draft is None:
        raise SpecGroveError("calibrate needs a draft model, not the n-gram drafter")
    # timed where served passes run (specgrove.compute): one thread, one OpenMP team
    profile = on_compute(calibrate, target, draft, drafter, num_prompts=args.num_prompts, quick=args.quick)
    out = args.out or profile_path(args.cache_dir, target.name, draft.name)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(profile.to_json())
    print(profile.to_json())
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_eval_draft(args) -> int:
    from specgrove_apps.eval_draft import evaluate
    from drafter.factory import make_drafter
    from specgrove.models import load_model
    from specgrove.workloads import load_workload

    loaded: dict = {}
    target = load_model(args.target, args.cache_dir, loaded)
    drafter, draft = make_drafter(args.draft, target, args.cache_dir, loaded)
    report = {"target": target.name, "draft": args.draft, "max_new_tokens": args.max_new_tokens, "workloads": {}}
    for workload in args.workloads.split(","):
        prompts = load_workload(workload, args.num_prompts)
        ids = [target.chat_prompt(p.text) if p.chat else target.encode(p.text) for p in prompts]
        report["workloads"][workload] = on_compute(evaluate, target, draft, drafter, ids, args.max_new_tokens,
                                                  args.draft_len)  # timed where served passes run
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=1)
    if args.model_card:
        from pathlib import Path

        from drafter.feature_model import is_feature_draft
        from training.model_card import render, render_feature

        card = Path(args.model_card) / "README.md"
        card.write_text((render_feature if is_feature_draft(Path(args.model_card)) else render)(Path(args.model_card), report))
        print(f"wrote {card}")
    return 0


def cmd_train_draft(args) -> int:
    from pathlib import Path

    if args.kind == "feature":
        from training.feature import FeatureTrainConfig as Config, run
    else:
        from training.distill import TrainConfig as Config, run
    defaults = {"feature": (FEATURE_TRAIN_CONFIG, "runs/feature", SHIPPED_FEATURE_DRAFT),
                "model": (DRAFT_TRAIN_CONFIG, "runs/draft", SHIPPED_DRAFT)}[args.kind]
    config = Config.from_file(Path(args.config or defaults[0]))
    # on the thread the models load on (specgrove.compute): a second thread's kernels would slow both
    out = on_compute(run, config, Path(args.run_dir or defaults[1]), Path(args.out or defaults[2]), args.cache_dir,
                     max_minutes=args.max_minutes)
    print(f"{out}")
    return 0



def add_calibrate(sub) -> None:
    """The calibrate subcommand and its flags."""
    cal = sub.add_parser("calibrate", help="measure verify/draft costs and acceptance into a profile")
    cal.add_argument("--target", default=DEFAULT_TARGET)
    cal.add_argument("--draft", required=True, help="a draft model: 'smollm2-feature', 'smollm2-draft', "
                                                       "'smollm2:layers=N' or a directory")
    cal.add_argument("--num-prompts", type=int, default=4)
    cal.add_argument("--quick", action="store_true", help="costs only; acceptance from a prior")
    cal.add_argument("--out", default=None, help="profile path (default: the cache, where generate finds it)")
    cal.set_defaults(func=cmd_calibrate)


def add_train_draft(sub) -> None:
    """The train-draft subcommand and its flags."""
    train = sub.add_parser("train-draft", help="train a draft for the target (resumable)")
    train.add_argument("--kind", choices=["feature", "model"], default="feature",
                       help="feature: the EAGLE-style head on the target's features (smollm2-feature); "
                            "model: the distilled independent draft (smollm2-draft)")
    train.add_argument("--config", default=None, help="training config JSON (default: the shipped draft's)")
    train.add_argument("--run-dir", default=None, help="data, checkpoints and logs (resumes from here; "
                                                       "default runs/feature or runs/draft)")
    train.add_argument("--out", default=None, help="where the finished draft is written (default: the shipped one)")
    train.add_argument("--max-minutes", type=float, default=None, help="stop training after this long (resume later)")
    train.set_defaults(func=cmd_train_draft)


def add_eval_draft(sub) -> None:
    """The eval-draft subcommand and its flags."""
    ev = sub.add_parser("eval-draft", help="a draft's agreement, acceptance and cost against the target")
    ev.add_argument("--target", default=DEFAULT_TARGET)
    ev.add_argument("--draft", default=DEFAULT_DRAFT)
    ev.add_argument("--workloads", default="humaneval,chat", help="comma-separated: humaneval, chat")
    ev.add_argument("--num-prompts", type=int, default=8)
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--draft-len", type=int, default=4, help="K of the chain run (mean accepted length)")
    ev.add_argument("--json", default=None, help="also write the report here")
    ev.add_argument("--model-card", default=None, help="write DIR/README.md (the draft's model card) from this run")
    ev.set_defaults(func=cmd_eval_draft)
