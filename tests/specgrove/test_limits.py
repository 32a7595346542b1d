"""Limits: flag over variable over default, refused when < 1; the serve command's flags; the
stop-string limits and prompt-id limit checked by the codec with a process's own limits."""

from __future__ import annotations

import pytest

from specgrove import codec
from specgrove.errors import InvalidArgument, OutOfRange
from specgrove.limits import Limits
from specgrove.v1 import generate_pb2
from specgrove_apps.cli import build_parser
from specgrove_apps.cli.serving import limits_from


def test_a_flag_wins_over_its_variable_which_wins_over_the_default():
    limits = Limits.from_values({"max_prompt_tokens": 5, "max_stop_strings": None},
                                {"SPECGROVE_MAX_PROMPT_TOKENS": "7", "SPECGROVE_MAX_STOP_STRINGS": "3"})
    assert (limits.max_prompt_tokens, limits.max_stop_strings) == (5, 3)
    assert limits.max_message_bytes == Limits().max_message_bytes == 16 * 1024 * 1024
    with pytest.raises(ValueError, match="max_streams_per_client"):
        Limits.from_values({"max_streams_per_client": 0}, {})


def test_serve_takes_every_limit_as_a_flag(monkeypatch):
    monkeypatch.setenv("SPECGROVE_MAX_MESSAGE_BYTES", "1024")
    args = build_parser().parse_args(["serve", "orchestrator", "--max-streams-per-client", "2",
                                      "--max-stop-string-chars", "9"])
    assert limits_from(args) == Limits(max_message_bytes=1024, max_streams_per_client=2, max_stop_string_chars=9)


def test_the_codec_applies_a_process_limits():
    limits = Limits(max_prompt_tokens=3, max_stop_strings=1, max_stop_string_chars=4)
    ok = generate_pb2.GenerateRequest(token_ids=generate_pb2.TokenIds(ids=[1, 2, 3]),
                                      sampling=generate_pb2.SamplingParams(stop=["abcd"]))
    assert codec.call_from_pb(ok, limits).prompt_ids == [1, 2, 3]
    for change, error, words in [
        (lambda r: r.token_ids.ids.append(4), OutOfRange, "at most 3 prompt tokens"),
        (lambda r: r.sampling.stop.append("x"), OutOfRange, "at most 1 stop strings"),
        (lambda r: r.sampling.stop.__setitem__(0, "abcde"), OutOfRange, "at most 4 characters"),
        (lambda r: setattr(r, "chat", True), InvalidArgument, "chat"),
    ]:
        bad = generate_pb2.GenerateRequest()
        bad.CopyFrom(ok)
        change(bad)
        with pytest.raises(error, match=words):
            codec.call_from_pb(bad, limits)
