"""A generation's output: token ids, when to stop, and text released safely for streaming.

Stop rules, checked after every token in order: an EOS id (finish "eos") or a stop id
(finish "stop") ends generation and stays in ``token_ids`` (special tokens are skipped in the
text); a stop string ends generation and is cut from the text, the token that completed it
staying in ``token_ids`` (as in vLLM); reaching max_new_tokens finishes with "length".
Streamed text holds back an incomplete UTF-8 character and any tail that could still grow into
a stop string, so nothing streamed is ever taken back.
"""

from __future__ import annotations

from typing import Callable

from specgrove.sampling import SamplingParams

REPLACEMENT = "\ufffd"  # what a decoder yields for a partial UTF-8 sequence


class GenerationOutput:
    def __init__(self, decode: Callable[[list[int]], str], eos_token_ids: frozenset[int], params: SamplingParams):
        self._decode = decode
        self._eos = eos_token_ids
        self._stop_ids = frozenset(params.stop_token_ids)
        self._stops = params.stop
        self._max_new_tokens = params.max_new_tokens
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None
        self._text = ""  # decoded text of token_ids, cut at a stop string once one is found
        self._released = 0  # characters of _text already streamed
        self._frozen = False  # True once _text was cut at a stop string

    @property
    def text(self) -> str:
        return self._text

    def add(self, token: int) -> bool:
        """Append one token; return True when generation must stop (finish_reason is then set)."""
        assert self.finish_reason is None, "output already finished"
        self.token_ids.append(token)
        if token in self._eos:
            self.finish_reason = "eos"
        elif token in self._stop_ids:
            self.finish_reason = "stop"
        if self._stops:
            searched = max(0, len(self._text) - max(map(len, self._stops)))
            self._text = self._decode(self.token_ids)
            hits = [i for i in (self._text.find(s, searched) for s in self._stops) if i >= 0]
            if hits:
                self._text = self._text[: min(hits)]
                self._frozen = True
                self.finish_reason = "stop"
        if self.finish_reason is None and len(self.token_ids) >= self._max_new_tokens:
            self.finish_reason = "length"
        return self.finish_reason is not None

    def release(self) -> str:
        """The text not streamed yet that can no longer change."""
        if not self._frozen:
            self._text = self._decode(self.token_ids)
        end = len(self._text)
        if self.finish_reason is None:
            while end > self._released and self._text[end - 1] == REPLACEMENT:
                end -= 1  # a multi-byte character still being completed
            end = min(end, len(self._text) - self._stop_prefix_at_end())
        end = max(end, self._released)
        delta = self._text[self._released : end]
        self._released = end
        return delta

    def _stop_prefix_at_end(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
