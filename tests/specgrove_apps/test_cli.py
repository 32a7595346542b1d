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
