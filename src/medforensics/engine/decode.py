"""Decoding in worker processes: a native decoder that panics, crashes or hangs costs one file, never the run.

:func:`decode_one` is the whole per-file work of the scan path before the model: read the file
with the model's saved preprocessing chain (reader → intensity → resize → channels), stack its
frames into one ``F×C×H×W`` float32 array, and — when a results store needs it — compute the
de-duplication key. It never raises for a bad file: the error is returned, named.

:class:`DecodePool` runs :func:`decode_one` in ``workers`` processes (forked: they run only the readers,
never the model). Each worker holds at
most ``prefetch`` files at a time, so memory is bounded by ``workers × prefetch`` decodes plus what
the caller keeps. A collector thread drains the workers' pipes as soon as results arrive (so a worker
never waits on the model) and watches them:

- a worker that dies (segfault, abort, a panic that kills the interpreter, the kernel's OOM killer)
  reports its current file as ``decoder crashed (worker exited with …)``;
- a file that takes longer than ``timeout`` seconds (an endless loop in a decoder) is reported as
  ``decoding timed out after … s`` and its worker is killed;

in both cases a fresh worker takes over the files that were queued behind it.
``workers=0`` decodes in the calling thread (no isolation; for debugging and tiny runs).
"""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from ..io import Preprocessing, UnreadableImageError

log = logging.getLogger(__name__)

#: per-file wall-clock limit of a decode (seconds); a decoder stuck longer is killed
DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class DecodeOptions:
    """What a decode does besides reading: how many frames, whether to key and header-inspect the file."""

    max_frames: int | None = 16
    want_key: bool = False  # compute content_key() (results-store de-duplication)
    decode_budget: int | None = None  # bytes one decode may hold (None: medforensics.io's budget)
    headers: bool = False  # DICOM header forensics (medforensics.headers) of each DICOM file


@dataclass
class Decoded:
    """What :func:`decode_one` made of one file: frames (F×C×H×W float32) and metadata, or an error."""

    seq: int
    path: str
    arrays: np.ndarray | None = None
    metas: list[dict[str, Any]] = field(default_factory=list)
    modality: str | None = None
    key: str | None = None
    error: str | None = None
    header: Any = None  # medforensics.headers.InstanceReport of a DICOM file (when asked for)

    @property
    def n_frames(self) -> int:
        return 0 if self.arrays is None else int(self.arrays.shape[0])


def decode_one(seq: int, path: str, preprocessing: Preprocessing, options: DecodeOptions) -> Decoded:
    """Load, preprocess and (as ``options`` ask) key and header-inspect one file; every failure
    becomes ``Decoded.error``."""
    from ..io import check_regular_file
    from .keys import content_key, file_sha256

    out = Decoded(seq=seq, path=path)
    p = Path(path)
    try:
        check_regular_file(p)  # before anything opens it: a FIFO or a device would block forever
        loaded = preprocessing.load(p, max_frames=options.max_frames, decode_budget=options.decode_budget)
        if not loaded.images:
            raise UnreadableImageError(p, "no image frames")
        out.arrays = np.stack(loaded.arrays)
        out.metas = [_meta_dict(im) for im in loaded.images]
        out.modality = loaded.images[0].meta.modality
        if options.headers and loaded.images[0].meta.source_format == "dicom":
            from ..headers import inspect_instance

            out.header = inspect_instance(p)
        if options.want_key:
            out.key = content_key(p)
    except UnreadableImageError as err:
        out.error = err.reason
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # e.g. pyo3's PanicException (a BaseException) from a Rust decoder
        out.error = f"decoder failed: {type(err).__name__}: {err}"
    if out.error is not None:
        out.arrays, out.metas = None, []
        if options.want_key and out.key is None:
            try:  # a regular file that fails still has an identity (its bytes), so the store can answer it
                out.key = file_sha256(p)
            except (UnreadableImageError, OSError):
                out.key = None
    return out


#: per-frame facts lifted from ``ImageMeta.extra`` into a result's metadata (series ordering needs them)
LIFTED_EXTRA = ("slice_position", "instance_number", "frame_shape")


def _meta_dict(image: Any) -> dict[str, Any]:
    meta = image.meta.to_dict()
    out = {k: v for k, v in meta.items() if k not in ("extra", "path") and v not in (None, "", ())}
    extra = meta.get("extra") or {}
    out.update({k: extra[k] for k in LIFTED_EXTRA if extra.get(k) is not None})
    return out


# --------------------------------------------------------------------------- worker process
def _worker_main(tasks: Connection, results: Connection, pre: dict[str, Any], options: DecodeOptions,
                 parent_ends: tuple[Connection, ...] = ()) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    faulthandler.disable()  # a decoder's segfault is reported by the parent, by file name, not as a dump
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for conn in parent_ends:  # the parent's ends of this worker's pipes, inherited by fork
        conn.close()
    parent = os.getppid()
    preprocessing = Preprocessing.from_dict(pre)
    while True:
        try:
            if not tasks.poll(1.0):
                if os.getppid() != parent:  # the parent died (even by SIGKILL): do not linger
                    return
                continue
            msg = tasks.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        seq, path = msg
        results.send(decode_one(seq, path, preprocessing, options))


@dataclass
class _Worker:
    proc: Any
    tasks: Connection
    results: Connection
    queued: deque = field(default_factory=deque)  # (seq, path) sent and not answered, in order
    head_since: float = 0.0  # when the file at the head of ``queued`` started decoding (approx.)


class DecodePool:
    """Decode files in isolated worker processes; see the module docstring."""

    def __init__(self, preprocessing: Preprocessing, options: DecodeOptions = DecodeOptions(), *, workers: int = 1,
                 timeout: float = DEFAULT_TIMEOUT, prefetch: int = 2):
        self.preprocessing = preprocessing
        self.options = options
        self.n_workers = max(0, int(workers))
        self.timeout = float(timeout)
        self.prefetch = max(1, int(prefetch))
        self.done: queue.Queue[Decoded] = queue.Queue()
        self.restarts = 0
        self._lock = threading.Lock()
        self._closed = False
        self._workers: list[_Worker] = []
        self._pre = preprocessing.to_dict()
        if self.n_workers:
            # fork: a worker starts in milliseconds and needs no `if __name__ == "__main__"` guard in the
            # caller's script; it runs only the readers (no torch, no threads of its own)
            self._ctx = mp.get_context("fork")
            self._workers = [self._start() for _ in range(self.n_workers)]
            self._collector = threading.Thread(target=self._collect, name="decode-collector", daemon=True)
            self._collector.start()

    # ------------------------------------------------------------------ workers
    def _start(self) -> _Worker:
        task_r, task_w = self._ctx.Pipe(duplex=False)
        res_r, res_w = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(target=_worker_main, args=(task_r, res_w, self._pre, self.options, (task_w, res_r)),
                                 name="medforensics-decode", daemon=True)
        proc.start()
        task_r.close()
        res_w.close()
        return _Worker(proc, task_w, res_r)

    def _replace(self, w: _Worker, reason: str) -> None:
        """Report ``w``'s current file as failed with ``reason``, start a new worker, hand it the rest."""
        try:
            w.proc.kill()
        except Exception:
            pass
        w.proc.join(timeout=5)
        for conn in (w.tasks, w.results):
            conn.close()
        failed = w.queued.popleft() if w.queued else None
        fresh = self._start()
        self.restarts += 1
        self._workers[self._workers.index(w)] = fresh
        if failed is not None:
            log.warning("decode worker lost on %s: %s", failed[1], reason)
            self.done.put(Decoded(seq=failed[0], path=failed[1], error=reason))
        fresh.head_since = time.monotonic()
        for seq, path in w.queued:
            fresh.queued.append((seq, path))
            fresh.tasks.send((seq, path))

    def _collect(self) -> None:
        while not self._closed:
            with self._lock:
                conns = {w.results: w for w in self._workers}
                sentinels = {w.proc.sentinel: w for w in self._workers}
            try:
                ready = wait(list(conns) + list(sentinels), timeout=0.1)
            except OSError:
                ready = []
            now = time.monotonic()
            with self._lock:
                if self._closed:
                    return
                for obj in ready:
                    w = conns.get(obj)
                    if w is None or w not in self._workers:
                        continue
                    try:
                        while w.results.poll():
                            item: Decoded = w.results.recv()
                            if w.queued and w.queued[0][0] == item.seq:
                                w.queued.popleft()
                            w.head_since = time.monotonic()
                            self.done.put(item)
                    except (EOFError, OSError):
                        pass  # the worker died: its sentinel handles it below
                for w in list(self._workers):
                    if not w.proc.is_alive():
                        code = w.proc.exitcode
                        why = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"status {code}"
                        self._replace(w, f"decoder crashed (worker exited with {why})")
                    elif w.queued and now - w.head_since > self.timeout:
                        self._replace(w, f"decoding timed out after {self.timeout:g} s")

    # ------------------------------------------------------------------ API
    @property
    def capacity(self) -> int:
        """How many more files can be submitted now without exceeding ``workers × prefetch``."""
        if not self.n_workers:
            return self.prefetch
        with self._lock:
            return sum(self.prefetch - len(w.queued) for w in self._workers)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return sum(len(w.queued) for w in self._workers)

    def submit(self, seq: int, path: str | Path) -> None:
        """Queue one file (``workers=0``: decode it now)."""
        path = str(path)
        if not self.n_workers:
            self.done.put(decode_one(seq, path, self.preprocessing, self.options))
            return
        with self._lock:
            w = min(self._workers, key=lambda w: len(w.queued))
            if not w.queued:
                w.head_since = time.monotonic()
            w.queued.append((seq, path))
            w.tasks.send((seq, path))

    def get(self, timeout: float | None = None) -> list[Decoded]:
        """Decoded files available now (waiting up to ``timeout`` s for the first one)."""
        out: list[Decoded] = []
        try:
            out.append(self.done.get(timeout=timeout) if timeout else self.done.get_nowait())
        except queue.Empty:
            return out
        while True:
            try:
                out.append(self.done.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        if self._closed:
            return
        with self._lock:
            self._closed = True
            workers = list(self._workers)
        for w in workers:
            try:
                w.tasks.send(None)
            except OSError:
                pass
        for w in workers:
            w.proc.join(timeout=2)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=2)
            for conn in (w.tasks, w.results):
                conn.close()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
