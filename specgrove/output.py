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
        self._committed = 0  # length of the text of token_ids[:_read] (the rest may still change)
        self._prefix = 0  # incremental decoding (as vLLM's detokenizer): tokens _prefix.._read are
        self._read = 0  # decoded again with the new ones, so a tokenizer's joins come out right
        self._released = 0  # characters of _text already streamed
        self._frozen = False  # True once _text was cut at a stop string

    @property
    def max_new_tokens(self) -> int:
        return self._max_new_tokens

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
            self._detokenize(final=False)
            hits = [i for i in (self._text.find(s, searched) for s in self._stops) if i >= 0]
            if hits:
                self._text = self._text[: min(hits)]
                self._frozen = True
                self.finish_reason = "stop"
        if self.finish_reason is None and len(self.token_ids) >= self._max_new_tokens:
            self.finish_reason = "length"
        return self.finish_reason is not None

    def _detokenize(self, final: bool) -> None:
        """Decode the tokens not yet in the text, O(new tokens) per call. A trailing incomplete
        UTF-8 character waits for the token that completes it (unless this is the end)."""
        if self._frozen or self._read == len(self.token_ids):
            return
        before = self._decode(self.token_ids[self._prefix : self._read])
        after = self._decode(self.token_ids[self._prefix :])
        if not after.startswith(before):  # a join that rewrote earlier text: decode it all
            self._text = self._decode(self.token_ids)
            self._prefix = self._read = len(self.token_ids)
            self._committed = len(self._text)
        elif final or not after.endswith(REPLACEMENT):
            self._text = self._text[: self._committed] + after[len(before) :]
            self._prefix, self._read = self._read, len(self.token_ids)
            self._committed = len(self._text)
        else:  # shown up to the incomplete character; decoded again with the next token
            self._text = self._text[: self._committed] + after[len(before) :].rstrip(REPLACEMENT)

    def release(self) -> str:
        """The text not streamed yet that can no longer change."""
        self._detokenize(final=self.finish_reason is not None)
        end = len(self._text)
        if self.finish_reason is None:
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
