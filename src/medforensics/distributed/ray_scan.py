"""The batch scan distributed over a Ray cluster (``medforensics scan --engine ray [--address …]``).

The driver walks the inputs (:func:`medforensics.engine.expand_inputs`); the files become a Ray Data
dataset (``ray.data.from_items``) mapped with :class:`ScoreWorker` through ``map_batches``: an actor
class, so each worker loads the model once and runs the local :class:`~medforensics.engine.ScanEngine`
(isolated decoding, batching, :func:`~medforensics.engine.content_key`) batch after batch
(``num_gpus`` > 0 reserves a GPU per worker; detectors whose config has ``device: "auto"`` then run
on it). Result rows stream back to the driver, which applies the store rule of
:mod:`medforensics.engine.dedup` — the same code as every other entry point — and commits each
result, so a killed run resumes the same way. (The key of a DICOM instance needs its decoded
pixels, so the store is consulted after the worker has read the file: a resumed run decodes again,
but records nothing twice.)

Workers read files by path and load the model by name or directory: on a multi-node cluster both
must be reachable from every node (shared filesystem) and ``medforensics`` installed there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import RunSummary, ScanEngine, ScanInput, StoreRule, expand_inputs, run_args
from ..results import ScanResult

log = logging.getLogger(__name__)


class ScoreWorker:
    """Ray Data callable class: loads the model once, then scans batches of ``{"path", "abs_path"}`` rows."""

    def __init__(self, model: str, threshold: float, max_frames: int, model_id: str):
        from ..detectors import load_detector

        self.engine = ScanEngine(load_detector(model), threshold=float(threshold), max_frames=int(max_frames),
                                 model_id=model_id, keys=True, workers=1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = [ScanInput(Path(str(local)), name=str(path)) for path, local in zip(batch["path"], batch["abs_path"])]
        rows = [json.dumps({**res.to_dict(), "content_hash": res.content_hash}, default=str)
                for res in self.engine.scan(inputs)]
        return {"path": np.asarray(batch["path"], dtype=object), "result": np.asarray(rows, dtype=object)}


def result_from_row(row: dict[str, Any]) -> ScanResult:
    """Inverse of the worker's JSON encoding."""
    d = json.loads(row["result"])
    fields = {k: d.get(k) for k in ("path", "modality", "score", "threshold", "verdict", "error", "model")}
    return ScanResult(**fields, frames=list(d.get("frames") or []), meta=dict(d.get("meta") or {}),
                      content_hash=d.get("content_hash"))


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Connect to the cluster at ``address`` (or start local Ray) unless Ray is already initialised."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


class RayScan:
    """Iterate over :class:`ScanResult` for every file under ``paths``, scored on Ray workers.

    Same contract as :meth:`medforensics.engine.ScanEngine.scan` with a store (de-duplication,
    resume, ``force``, :attr:`summary` with images/s); inputs that fail before reading (a missing
    path) come first, then the rest in input order.
    """

    def __init__(self, paths: Iterable[str | Path], model: str, *, detector: Any = None, store: Any = None,
                 threshold: float | None = None, max_frames: int = 16, force: bool = False, resume: bool = True,
                 address: str | None = None, num_gpus: float = 0.0, workers: int = 1, batch_size: int = 8,
                 num_cpus_per_worker: float = 1.0):
        from ..detectors import load_detector
        from ..engine import model_fingerprint

        self.paths = list(paths)
        self.model = str(Path(model).resolve()) if Path(model).exists() else str(model)  # workers' cwd differs
        self.detector = detector if detector is not None else load_detector(model)
        self.store = store
        self.threshold = self.detector.threshold if threshold is None else float(threshold)
        self.max_frames = max_frames
        self.resume = resume
        self.address = address
        self.num_gpus = float(num_gpus)
        self.workers = max(1, int(workers))
        self.batch_size = max(1, int(batch_size))
        self.num_cpus_per_worker = num_cpus_per_worker
        self.model_id = model_fingerprint(self.detector)
        self.rule = StoreRule(store, self.detector, self.model_id, force=force, source="ray") if store is not None else None
        self.args = run_args(self.paths, self.model_id, threshold=self.threshold, max_frames=max_frames, engine="ray")
        self.summary = RunSummary()

    def _open_run(self) -> str | None:
        if self.store is None:
            return None
        run_id = self.store.find_open_run("scan", self.args) if self.resume else None
        if run_id is not None:
            self.store.resume_run(run_id)
            return run_id
        return self.store.start_run("scan", self.args)

    def _answer(self, res: ScanResult, run_id: str | None) -> tuple[ScanResult, bool]:
        """The store rule for one scored row: (the result to report, whether it counts as freshly scored)."""
        if self.rule is None:
            return res, True
        previous = self.rule.lookup(res.content_hash)
        if self.rule.answers(previous):
            return self.rule.cached_result(previous, res.path, self.threshold, res.content_hash), False
        return self.rule.record(res, res.content_hash, previous, run_id=run_id), True

    def __iter__(self) -> Iterator[ScanResult]:
        import ray

        s = self.summary = RunSummary()
        s.run_id = self._open_run()
        start = time.perf_counter()
        todo: list[dict[str, str]] = []
        for inp in expand_inputs(self.paths):
            if inp.error is not None:
                res = ScanResult(path=inp.reported, error=inp.error, threshold=self.threshold, model=self.model_id)
                s.count(res, scored=False)
                yield res
            else:
                todo.append({"path": inp.reported, "abs_path": str(Path(inp.path).resolve())})
        if todo:
            ensure_ray(self.address)
            ctx = ray.data.DataContext.get_current()
            ctx.execution_options.preserve_order = True
            ctx.enable_progress_bars = False
            logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset chatter on the console
            ds = ray.data.from_items(todo).map_batches(
                ScoreWorker,
                fn_constructor_kwargs={"model": self.model, "threshold": self.threshold,
                                       "max_frames": self.max_frames, "model_id": self.model_id},
                batch_size=self.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=self.workers),
                num_gpus=self.num_gpus, num_cpus=self.num_cpus_per_worker,
            )
            for row in ds.iter_rows():
                res, scored = self._answer(result_from_row(row), s.run_id)
                s.count(res, scored)
                yield res
        s.finish(time.perf_counter() - start)
        if self.store is not None and s.run_id:
            self.store.finish_run(s.run_id, n_ok=s.n_ok, n_error=s.n_error, n_cached=s.n_cached,
                                  seconds=s.seconds, images_per_s=s.images_per_s)
