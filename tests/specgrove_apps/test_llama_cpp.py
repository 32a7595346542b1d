"""llama.cpp beside the bench: a clear error without a build, and a real run when one is given
(SPECGROVE_LLAMA_CPP names a build's llama-bench; building one takes ~12 minutes, so CI has none)."""

import os
from pathlib import Path

import pytest

from specgrove.errors import InvalidArgument
from specgrove_apps.llama_cpp import plain_decoding


def test_a_folder_without_llama_bench_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidArgument, match="no llama-bench binary"):
        plain_decoding(tmp_path, new_tokens=8, depth=16, threads=1)


@pytest.mark.skipif(not os.environ.get("SPECGROVE_LLAMA_CPP"), reason="no llama.cpp build named (SPECGROVE_LLAMA_CPP)")
def test_llama_cpp_decodes_the_default_targets_gguf():
    result = plain_decoding(Path(os.environ["SPECGROVE_LLAMA_CPP"]), new_tokens=8, depth=16, threads=1, repeats=1)
    assert result["tokens_per_s"] > 0 and result["new_tokens"] == 8 and result["depth"] == 16
