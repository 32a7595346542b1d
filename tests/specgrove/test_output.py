from specgrove.output import GenerationOutput
from specgrove.sampling import SamplingParams

ALPHABET = {i: c for i, c in enumerate("xyzabcdefghijklmnop")}  # id 0..18 -> one character; id 2 is 'z'


def decode(ids):
    return "".join(ALPHABET[i] for i in ids if i != 1)  # id 1 plays a special token (skipped)


def feed(output, ids):
    streamed = ""
    for token in ids:
        done = output.add(token)
        streamed += output.release()
        if done:
            break
    return streamed


def test_eos_finishes_and_stays_in_token_ids():
    output = GenerationOutput(decode, frozenset({1}), SamplingParams(max_new_tokens=10))
    streamed = feed(output, [3, 4, 1, 5])
    assert output.finish_reason == "eos"
    assert output.token_ids == [3, 4, 1]
    assert streamed == output.text == "ab"


def test_max_new_tokens_finishes_with_length():
    output = GenerationOutput(decode, frozenset(), SamplingParams(max_new_tokens=3))
    feed(output, [3, 4, 5, 6, 7])
    assert output.finish_reason == "length" and output.token_ids == [3, 4, 5]


def test_stop_token_id_finishes_with_stop():
    output = GenerationOutput(decode, frozenset(), SamplingParams(max_new_tokens=10, stop_token_ids=(5,)))
    feed(output, [3, 4, 5, 6])
    assert output.finish_reason == "stop" and output.token_ids == [3, 4, 5]


def test_stop_string_is_cut_from_text_and_never_streamed():
    output = GenerationOutput(decode, frozenset(), SamplingParams(max_new_tokens=20, stop=("cde",)))
    streamed = feed(output, [3, 4, 5, 6, 7, 8, 9])  # "abcdefg"
    assert output.finish_reason == "stop"
    assert output.token_ids == [3, 4, 5, 6, 7]  # up to the token that completed "cde"
    assert output.text == "ab"
    assert streamed == "ab"


def test_partial_stop_prefix_is_held_back_then_released():
    output = GenerationOutput(decode, frozenset(), SamplingParams(max_new_tokens=4, stop=("cde",)))
    output.add(3)
    output.add(5)  # "ac": 'c' could start "cde"
    assert output.release() == "a"
    output.add(6)
    output.add(8)  # "acdf" and max_new_tokens reached: all is final
    assert output.release() == "cdf"
    assert output.finish_reason == "length" and output.text == "acdf"


def test_incomplete_utf8_is_held_back():
    pieces = {0: "a", 1: "\ufffd", 2: "é"}

    def byte_decode(ids):  # token 1 alone is half a character; followed by 2 it completes it
        text = "".join(pieces[i] for i in ids)
        return text.replace("\ufffdé", "é")

    output = GenerationOutput(byte_decode, frozenset(), SamplingParams(max_new_tokens=5))
    output.add(0)
    output.add(1)
    assert output.release() == "a"
    output.add(2)
    assert output.release() == "é"


def test_incremental_decoding_streams_exactly_the_full_decode():
    """Byte-level tokens that split multi-byte characters, and a SentencePiece-style decoder that
    drops the leading space of the whole text: streaming (decoding only the new tokens with a
    little context) gives exactly the text of decoding everything at once."""
    import random

    pieces = [b"a", b" b", b"\xc3", b"\xa9", b"\xe2\x82", b"\xac", b" ", b"cd", b"\xf0\x9f", b"\x98\x80"]

    def byte_level(ids):
        return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")

    def sentencepiece_like(ids):
        text = byte_level(ids)
        return text[1:] if text.startswith(" ") else text

    rng = random.Random(0)
    for decode_fn in (byte_level, sentencepiece_like):
        for _ in range(200):
            ids = [rng.randrange(len(pieces)) for _ in range(rng.randrange(1, 30))]
            output = GenerationOutput(decode_fn, frozenset(), SamplingParams(max_new_tokens=len(ids)))
            streamed = ""
            for token in ids:
                output.add(token)
                streamed += output.release()  # what was streamed is never taken back:
            assert streamed == output.text == decode_fn(ids)  # the pieces join into the full decode
