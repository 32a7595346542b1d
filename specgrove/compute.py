"""One thread per process runs the model work: every forward pass, draft level and verification.

Why: torch's CPU kernels fork and join GNU OpenMP teams, and libgomp keeps a team for each thread
that has run a parallel region, for as long as that thread lives. Once two threads own teams (more
team threads than CPUs), libgomp stops spinning between regions and parks its workers, so every
parallel region of every thread pays a wake-up. On a 2-core CPU that makes a decode step's matrix
products markedly slower and its KV-sized copies several times slower, and batched plain decoding
loses close to half its throughput; a model loaded on another thread slows even one client's chain
(the figures: docs/bench/history.md, "One compute thread per process"). OMP_WAIT_POLICY and
GOMP_SPINCOUNT do not lift the throttle. A server's handler threads, an engine's client threads and
a bench's main thread would each grow a team; routing their model work (loading included) through
this one thread keeps one team per process. A function run here must not wait for a thread that may
itself be waiting to run something here (a deadlock): the verifier's leader sleeps and gathers
outside it, and a feature draft fetches the target's features before its levels come here.

``on_compute(fn, *args)`` runs ``fn`` there (inline when already there) under the caller's grad
and inference modes and intra-op thread count, which are thread-local in torch;
``compute_iter(generator)`` advances a generator there, one item per call, so a tree still streams
level by level."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable, Iterator, TypeVar

import torch

T = TypeVar("T")

_lock = threading.Lock()
_calls: queue.SimpleQueue | None = None  # (future, call) pairs for the compute thread
_ident: int | None = None


def _thread() -> queue.SimpleQueue:
    """The compute thread's queue, started on first use.

    Not a ThreadPoolExecutor: its ``submit`` holds a lock shared by every executor of the
    process while it allocates, so a garbage-collected generator whose cleanup runs model work
    here (a drafter round's ``finally`` closing its steps) could fire inside ``submit`` and wait
    for that very lock: a served drafter hung this way in a failover test. SimpleQueue.put is
    reentrant, and once the thread runs no lock is taken on the way in."""
    global _calls
    calls = _calls
    if calls is not None:
        return calls
    with _lock:
        if _calls is None:
            calls, started = queue.SimpleQueue(), threading.Event()
            threading.Thread(target=_serve, args=(calls, started), name="specgrove-compute", daemon=True).start()
            started.wait()
            _calls = calls
        return _calls


def _serve(calls: queue.SimpleQueue, started: threading.Event) -> None:
    global _ident
    _ident = threading.get_ident()
    started.set()
    while True:
        future, call = calls.get()
        if not future.set_running_or_notify_cancel():
            continue
        try:
            result = call()
        except BaseException as exc:  # noqa: BLE001 - raised in the caller, as an executor would
            future.set_exception(exc)
        else:
            future.set_result(result)
        del future, call


def on_compute_thread() -> bool:
    return _ident is not None and threading.get_ident() == _ident


def on_compute(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` on the compute thread, with the caller's grad and inference modes and
    intra-op threads; its exception is raised here. Calls from several threads run one at a time,
    in arrival order."""
    if on_compute_thread():
        return fn(*args, **kwargs)
    inference, grad, threads = torch.is_inference_mode_enabled(), torch.is_grad_enabled(), torch.get_num_threads()

    def call():
        if torch.get_num_threads() != threads:  # a thread's count is its own (tests set 1 for tiny models)
            torch.set_num_threads(threads)
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(*args, **kwargs)

    future: Future = Future()
    _thread().put((future, call))
    return future.result()


_DONE = object()


def compute_iter(items: Iterator[T]) -> Iterator[T]:
    """Advance ``items`` (a generator doing model work) on the compute thread, one item per step;
    the items reach the caller as they come, and closing this early closes ``items`` there too."""
    exhausted = False
    try:
        while True:
            item = on_compute(next, items, _DONE)
            if item is _DONE:
                exhausted = True  # nothing to close: no further trip to the compute thread
                return
            yield item
    finally:
        close = getattr(items, "close", None)
        if close is not None and not exhausted:
            on_compute(close)
