"""The batch scan distributed over a Ray cluster (``medforensics scan --engine ray [--address …]``).

The driver walks the inputs and hashes each file; files the store already answers never leave the
driver. The rest become a Ray Data dataset (``ray.data.from_items``) mapped with
:class:`ScoreWorker` through ``map_batches``: an actor class, so each worker loads the model once
and scores batch after batch (``num_gpus`` > 0 reserves a GPU per worker; detectors whose config
has ``device: "auto"`` then run on it). Result rows stream back to the driver, which writes them to
the same results store as the local engine (commit per result, so a killed run resumes the same way).

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

from ..batch import BatchSummary, iter_paths, run_args
from ..io import UnreadableImageError
from ..results import ScanResult

log = logging.getLogger(__name__)


class ScoreWorker:
    """Ray Data callable class: loads the model once, then scores batches of ``{"path", "content_hash"}``."""

    def __init__(self, model: str, threshold: float, max_frames: int, model_id: str):
        from ..detectors import load_detector

        self.detector = load_detector(model)
        self.threshold = float(threshold)
        self.max_frames = int(max_frames)
        self.model_id = model_id

    def score_one(self, path: str) -> ScanResult:
        from ..io import load_frames
        from ..scan import score_frames

        try:
            frames = load_frames(path, max_frames=self.max_frames)
        except UnreadableImageError as err:
            return ScanResult(path=path, error=err.reason, threshold=self.threshold, model=self.model_id)
        except Exception as err:  # never let one file fail the whole batch
            return ScanResult(path=path, error=f"cannot read file: {type(err).__name__}: {err}",
                              threshold=self.threshold, model=self.model_id)
        return score_frames(path, frames, self.detector, self.threshold, with_maps=False, model_id=self.model_id)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        for path, local in zip(batch["path"], batch["abs_path"]):
            res = self.score_one(str(local))
            res.path = str(path)
            rows.append(json.dumps(res.to_dict(), default=str))
        return {"path": np.asarray(batch["path"], dtype=object), "content_hash": np.asarray(batch["content_hash"],
                dtype=object), "result": np.asarray(rows, dtype=object)}


def result_from_row(row: dict[str, Any]) -> ScanResult:
    """Inverse of the worker's JSON encoding."""
    d = json.loads(row["result"])
    fields = {k: d.get(k) for k in ("path", "modality", "score", "threshold", "verdict", "error", "model")}
    return ScanResult(**fields, frames=list(d.get("frames") or []), meta=dict(d.get("meta") or {}),
                      content_hash=str(row["content_hash"]))


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

    Same contract as :class:`medforensics.batch.BatchScan` (store dedup, resume, ``force``,
    :attr:`summary` with images/s); results answered from the store come first, then the scored ones
    in input order.
    """

    def __init__(self, paths: Iterable[str | Path], model: str, *, detector: Any = None, store: Any = None,
                 threshold: float | None = None, max_frames: int = 16, force: bool = False, resume: bool = True,
                 address: str | None = None, num_gpus: float = 0.0, workers: int = 1, batch_size: int = 8,
                 num_cpus_per_worker: float = 1.0):
        from ..detectors import load_detector
        from ..store import model_fingerprint

        self.paths = list(paths)
        self.model = str(Path(model).resolve()) if Path(model).exists() else str(model)  # workers' cwd differs
        self.detector = detector if detector is not None else load_detector(model)
        self.store = store
        self.threshold = self.detector.threshold if threshold is None else float(threshold)
        self.max_frames = max_frames
        self.force = force
        self.resume = resume
        self.address = address
        self.num_gpus = float(num_gpus)
        self.workers = max(1, int(workers))
        self.batch_size = max(1, int(batch_size))
        self.num_cpus_per_worker = num_cpus_per_worker
        self.model_id = model_fingerprint(self.detector)
        self.args = run_args(self.paths, self.model_id, threshold=self.threshold, max_frames=max_frames, engine="ray")
        self.summary = BatchSummary()

    def _open_run(self) -> str | None:
        if self.store is None:
            return None
        run_id = self.store.find_open_run("scan", self.args) if self.resume else None
        if run_id is not None:
            self.store.resume_run(run_id)
            return run_id
        return self.store.start_run("scan", self.args)

    def _count(self, res: ScanResult) -> None:
        s = self.summary
        s.n_files += 1
        s.n_ok += res.ok
        s.n_error += not res.ok
        s.n_cached += res.cached

    def _pending(self) -> Iterator[ScanResult | tuple[str, str, Any]]:
        """Driver pass: errors and store hits as results, the rest as ``(path, hash, previous)`` to score."""
        from ..store import content_hash

        det = self.detector
        for item in iter_paths(self.paths):
            if isinstance(item, UnreadableImageError):
                yield ScanResult(path=item.path, error=item.reason, threshold=self.threshold, model=self.model_id)
                continue
            try:
                digest = content_hash(item)
            except OSError as err:
                yield ScanResult(path=str(item), error=f"cannot read file: {err.strerror or err}",
                                 threshold=self.threshold, model=self.model_id)
                continue
            prev = None
            if self.store is not None and not self.force:
                prev = self.store.find(content_hash=digest, detector=det.name, detector_version=det.version,
                                       model_id=self.model_id)
            if prev is not None and prev.ok:
                res = prev.to_result(path=str(item), threshold=self.threshold)
                res.content_hash, res.scan_id, res.cached = digest, prev.id, True
                yield res
            else:
                yield (str(item), digest, prev)

    def __iter__(self) -> Iterator[ScanResult]:
        import ray

        s = self.summary = BatchSummary()
        s.run_id = self._open_run()
        start = time.perf_counter()
        todo: list[dict[str, str]] = []
        previous: dict[str, Any] = {}
        for item in self._pending():
            if isinstance(item, ScanResult):
                self._count(item)
                yield item
            else:
                path, digest, prev = item
                todo.append({"path": path, "abs_path": str(Path(path).resolve()), "content_hash": digest})
                if prev is not None:
                    previous[path] = prev
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
                res = result_from_row(row)
                s.n_scored += 1
                prev = previous.get(res.path)
                if self.store is not None:
                    if prev is not None and not res.ok:  # failed again: the stored error answers it
                        res.scan_id, res.cached = prev.id, True
                    else:
                        rec = self.store.add(res, content_hash=res.content_hash, detector=self.detector.name,
                                             detector_version=self.detector.version, source="ray",
                                             run_id=s.run_id, model_id=self.model_id)
                        res.scan_id = rec.id
                self._count(res)
                yield res
        s.finish(time.perf_counter() - start)
        if self.store is not None and s.run_id:
            self.store.finish_run(s.run_id, n_ok=s.n_ok, n_error=s.n_error, n_cached=s.n_cached,
                                  seconds=s.seconds, images_per_s=s.images_per_s)
