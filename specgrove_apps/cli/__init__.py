"""The ``specgrove`` command line: the top-level parser and the dispatcher. Each command group
lives in its own module (generate, demo, drafts, serving, bench, simulate) and adds its subcommands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from specgrove.config import default_cache_dir
from specgrove.errors import SpecGroveError
from specgrove_apps.cli import bench, demo, drafts, generate, serving, simulate

DESCRIPTION = "The ``specgrove`` command line: generate text (plain or speculative) and run the demo."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specgrove", description=DESCRIPTION)
    parser.add_argument("--cache-dir", type=os.path.expanduser, default=None,
                        help="where converted models are cached (default $SPECGROVE_CACHE_DIR or ~/.cache/specgrove)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    for add in (generate.add_parser, demo.add_parser, drafts.add_calibrate, drafts.add_train_draft,
                serving.add_serve, serving.add_up, drafts.add_eval_draft, bench.add_parser,
                simulate.add_parser):  # the --help order
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = "INFO" if args.verbose else os.environ.get("SPECGROVE_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING), format="%(message)s")
    args.cache_dir = default_cache_dir() if args.cache_dir is None else Path(args.cache_dir)
    try:
        return args.func(args)
    except SpecGroveError as err:
        print(f"specgrove: error: {err}", file=sys.stderr)
        return 2
