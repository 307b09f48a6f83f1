"""Compiling the numba backend's kernels on a background thread while calls run numpy_taps.

numba compiles a kernel the first time a process calls it (2-5 s for convflow's larger
kernels, on the machines it is measured on) or loads it from the disk cache (still about
0.5 s for numba's own start-up). With ``CONVFLOW_NUMBA_WARMUP=background`` (the default) a
call whose algorithm is not ready yet does not wait: the backend hands a *job* to this
module, which runs it on one background thread, and the call itself runs ``numpy_taps``. A
job runs the real algorithm once on the call's operands (its result is dropped), so exactly
the kernels that path needs are compiled, for the argument types it passes; when it ends,
its key is ready and the backend's plans are made again, with the real algorithm.

Why a thread and not a process: a process would compile into the disk cache, and this one
would still have to load every kernel (numba's start-up included) before using it. The
thread holds the GIL only while numba's compiler runs Python code; the call's numpy
products release it.

Lifetime and safety:

* the thread is not a daemon, so a process exits once the jobs it started are done: the
  kernels are then in the disk cache and the next process loads them instead;
* ``os.fork`` waits for the job in progress (a child must not inherit numba's compiler lock
  held by a thread it does not have); in the child the queue is empty and keys that were
  not ready are compiled again when a call needs them;
* a job that fails (out of memory, say) still marks its key ready: the next call runs the
  real algorithm in the caller's thread, and any error is raised there, where it belongs.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable

logger = logging.getLogger("convflow")


class WarmUp:
    """One background thread that runs jobs, each making one key ready.

    Parameters
    ----------
    on_ready : callable
        Called (on the worker thread) after each job, with its key.
    """

    def __init__(self, on_ready: Callable[[Hashable], None]) -> None:
        self._on_ready = on_ready
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._running = threading.Lock()   # held while a job runs: fork waits on it
        self._ready: set[Hashable] = set()
        self._queue: collections.OrderedDict[Hashable, Callable[[], object]] = (
            collections.OrderedDict())
        self._active: Hashable | None = None
        self._thread: threading.Thread | None = None
        os.register_at_fork(before=self._before_fork, after_in_parent=self._after_fork,
                            after_in_child=self._after_fork_in_child)

    def is_ready(self, key: Hashable) -> bool:
        return key in self._ready

    def mark_ready(self, key: Hashable) -> None:
        """*key*'s kernels are compiled (a call ran its algorithm in the caller's thread)."""
        if key not in self._ready:
            with self._lock:
                self._ready.add(key)
                self._queue.pop(key, None)

    def submit(self, key: Hashable, job: Callable[[], object]) -> None:
        """Run *job* on the background thread unless *key* is ready, queued or running."""
        with self._lock:
            if key in self._ready or key in self._queue or key == self._active:
                return
            self._queue[key] = job
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="convflow-warmup",
                                                daemon=False)
                self._thread.start()
            self._changed.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job is queued or running; False if *timeout* seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._queue or self._active is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    self._changed.notify_all()
                    return
                key, job = self._queue.popitem(last=False)
                self._active = key
            try:
                with self._running:
                    started = time.perf_counter()
                    try:
                        job()
                    except Exception as exc:  # the caller's thread meets it again, and raises
                        logger.debug("convflow warm-up of %s failed: %r", key, exc)
                    logger.debug("convflow warm-up of %s took %.2f s", key,
                                 time.perf_counter() - started)
                with self._lock:
                    self._ready.add(key)
                self._on_ready(key)
            finally:
                # Whatever happened, the key is not running any more: wait() never hangs on it.
                with self._lock:
                    self._active = None
                    self._changed.notify_all()

    # Fork safety ---------------------------------------------------------------------------
    def _before_fork(self) -> None:
        self._running.acquire()
        self._lock.acquire()

    def _after_fork(self) -> None:
        self._lock.release()
        self._running.release()

    def _after_fork_in_child(self) -> None:
        # The worker thread does not exist here: its queue is dropped (those keys compile
        # again when a call needs them) and the locks start afresh.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._running = threading.Lock()
        self._queue = collections.OrderedDict()
        self._active = None
        self._thread = None
