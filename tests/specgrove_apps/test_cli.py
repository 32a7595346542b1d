"""Command-line edge: settings arrive with the right types."""

from pathlib import Path

import specgrove_apps.cli as cli
from specgrove_apps.cli import drafts


def test_cache_dir_from_the_command_line_is_a_path(monkeypatch):
    """Served roles get --cache-dir as text; every model loader needs a Path."""
    seen = {}
    monkeypatch.setattr(drafts, "cmd_calibrate", lambda args: seen.setdefault("dir", args.cache_dir) and 0)
    cli.main(["--cache-dir", "/tmp/somewhere", "calibrate", "--draft", "ngram"])
    assert seen["dir"] == Path("/tmp/somewhere")


def test_guess_flags_take_positive_counts_and_default_to_the_drafters():
    import pytest

    from specgrove.config import GUESS_COUNT
    from specgrove_apps.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["serve", "drafter"])
    assert (args.guess_count, args.guess_width) == (GUESS_COUNT, None)
    assert parser.parse_args(["up", "--guess-ahead", "--guess-width", "2"]).guess_width == 2
    for bad in (["serve", "drafter", "--guess-count", "0"], ["up", "--guess-width", "-1"],
                ["bench", "--guess-count", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
