"""Inference runtimes for a detector's network, chosen by measurement.

A *runtime* runs one ``torch.nn.Module`` (tensor in → tensor of logits out) for inference:

- ``eager`` — the module as it is (the reference);
- ``eager_fused`` — a copy with every Conv→BatchNorm pair folded into the convolution
  (``torch.fx.experimental.optimization.fuse``) and channels-last memory format;
- ``compile`` — ``torch.compile`` (Inductor; needs a C++ compiler, compiles on first call);
- ``onnx_fp32`` — ONNX export run by ONNX Runtime (the ``runtime`` extra: ``onnx``, ``onnxruntime``);
- ``onnx_int8`` — the same graph statically quantised to int8 (QDQ, per-channel weights, activations
  calibrated on real, preprocessed validation images).

:func:`select_runtime` measures every available candidate on a fixed batch (images/s after a
warm-up), checks parity against ``eager`` (max |Δ logit| and |Δ sigmoid(logit)|), keeps the fastest
that passes and falls back to ``eager`` when a runtime is missing or fails, logging why.
:func:`save_runtime` records the choice in a model directory (``config.json`` key ``runtime``; the
ONNX runtimes also write ``runtime.onnx``, a plain protobuf graph, never a pickle);
:func:`load_runner` rebuilds it when the detector is loaded, or returns None (→ eager) with a log
line when it cannot (runtime not installed, weights changed since the choice, file missing).

Threads: torch keeps its own default (one thread per physical core); ONNX Runtime sessions use the
same number of intra-op threads (``torch.get_num_threads()``), one inter-op thread and sequential
execution, so both runtimes compete on equal terms and never oversubscribe the CPU.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

RUNTIMES = ("eager", "eager_fused", "compile", "onnx_fp32", "onnx_int8")
#: runtimes measured by default (``compile`` is opt-in: minutes of compilation on a small CPU, and
#: a compiled module cannot be stored, so every process would pay it again)
DEFAULT_CANDIDATES = ("eager", "eager_fused", "onnx_fp32", "onnx_int8")
ONNX_FILE = "runtime.onnx"
OPSET = 17


class RuntimeUnavailable(RuntimeError):
    """A runtime cannot be built here (package missing, export failed, …); the message says why."""


# ---------------------------------------------------------------------------------------- runners
class Runner:
    """A callable ``N×… float tensor → tensor`` for inference (no autograd)."""

    name = "eager"

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str):
        self._fn, self.name = fn, name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self._fn(x)


def eager_runner(module: nn.Module) -> Runner:
    module.eval()
    return Runner(module, "eager")


def fused_runner(module: nn.Module, leaf_modules: Sequence[type] = ()) -> Runner:
    """Conv→BN folded (torch.fx) + channels-last, on a copy of ``module`` (which is left untouched).

    ``leaf_modules``: module types torch.fx must not trace into (e.g. ones with shape-dependent Python).
    """
    from torch import fx
    from torch.fx.experimental.optimization import fuse

    leaves = tuple(leaf_modules)

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    model = copy.deepcopy(module).eval()
    try:
        graph = _Tracer().trace(model)
        fused = fuse(fx.GraphModule(model, graph), no_trace=True).eval()
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "not available for this module"
        raise RuntimeUnavailable(f"torch.fx could not trace the module for conv-BN fusion: {exc}") from exc
    fused = fused.to(memory_format=torch.channels_last)
    return Runner(lambda x: fused(x.contiguous(memory_format=torch.channels_last)), "eager_fused")


def compiled_runner(module: nn.Module) -> Runner:
    import shutil

    if shutil.which("c++") is None and shutil.which("g++") is None:
        raise RuntimeUnavailable("torch.compile needs a C++ compiler (c++/g++ not found)")
    model = copy.deepcopy(module).eval()
    try:
        compiled = torch.compile(model, dynamic=False)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeUnavailable(f"torch.compile failed: {exc}") from exc
    return Runner(compiled, "compile")


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def _require_ort() -> Any:
    if not onnxruntime_available():
        raise RuntimeUnavailable("onnx/onnxruntime are not installed (pip install 'medforensics[runtime]')")
    import onnxruntime

    return onnxruntime


def export_onnx(module: nn.Module, example: torch.Tensor) -> bytes:
    """The module as an ONNX graph (dynamic batch, height and width; TorchScript exporter, opset 17)."""
    import io
    import warnings

    _require_ort()
    buf = io.BytesIO()
    model = copy.deepcopy(module).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example[:1],), buf, dynamo=False, opset_version=OPSET,
                              input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n"}})
    except Exception as exc:  # noqa: BLE001
        raise RuntimeUnavailable(f"ONNX export failed: {exc}") from exc
    return buf.getvalue()


def ort_runner(model: bytes, name: str, threads: int | None = None) -> Runner:
    """An ONNX Runtime CPU session (``threads`` intra-op threads; default torch's thread count)."""
    ort = _require_ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise RuntimeUnavailable(f"ONNX Runtime could not load the {name} graph: {exc}") from exc
    in_name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(session.run(None, {in_name: arr})[0])

    return Runner(run, name)


class _ArrayReader:
    """onnxruntime.quantization CalibrationDataReader over a list of preprocessed N×C×H×W batches."""

    def __init__(self, batches: Sequence[torch.Tensor | np.ndarray], input_name: str = "x"):
        self._items = [{input_name: np.ascontiguousarray(np.asarray(b, dtype=np.float32))} for b in batches]
        self._it = iter(self._items)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._items)


def quantize_int8(fp32_model: bytes, calibration_batches: Sequence[torch.Tensor | np.ndarray]) -> bytes:
    """Static int8 quantisation of an ONNX graph: QDQ format, per-channel weights, MinMax activation
    ranges calibrated on ``calibration_batches`` (real preprocessed images)."""
    _require_ort()
    if not calibration_batches:
        raise RuntimeUnavailable("static int8 quantisation needs calibration images (none given)")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(fp32_model)
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation only
            log.info("onnx_int8: quant_pre_process skipped (%s)", exc)
            pre = src
        try:
            quantize_static(str(pre), str(dst), _ArrayReader(calibration_batches),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        except Exception as exc:  # noqa: BLE001
            raise RuntimeUnavailable(f"static int8 quantisation failed: {exc}") from exc
        return dst.read_bytes()


@dataclass
class Built:
    runner: Runner
    onnx: bytes | None = None  # the graph to store, for the ONNX runtimes


def build_runner(name: str, module: nn.Module, example: torch.Tensor,
                 calibration_batches: Sequence[torch.Tensor] | None = None, threads: int | None = None,
                 leaf_modules: Sequence[type] = ()) -> Built:
    """Build one runtime for ``module``; raises :class:`RuntimeUnavailable` (with the reason) when it cannot."""
    if name == "eager":
        return Built(eager_runner(module))
    if name == "eager_fused":
        return Built(fused_runner(module, leaf_modules))
    if name == "compile":
        return Built(compiled_runner(module))
    if name == "onnx_fp32":
        graph = export_onnx(module, example)
        return Built(ort_runner(graph, name, threads), graph)
    if name == "onnx_int8":
        graph = quantize_int8(export_onnx(module, example), list(calibration_batches or []))
        return Built(ort_runner(graph, name, threads), graph)
    raise ValueError(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}")


# ---------------------------------------------------------------------------------- measurement
def images_per_second(runner: Callable[[torch.Tensor], Any], batch: torch.Tensor, warmup: int = 1,
                      repeats: int = 3, min_seconds: float = 0.0) -> float:
    """Images/s of ``runner`` on ``batch``: the best of ``repeats`` timed calls after ``warmup`` calls
    (the best, not the mean: on a shared CPU the slow calls measure the neighbours)."""
    for _ in range(max(0, warmup)):
        runner(batch)
    best, spent, done = float("inf"), 0.0, 0
    while done < max(1, repeats) or spent < min_seconds:
        t0 = time.perf_counter()
        runner(batch)
        dt = time.perf_counter() - t0
        best, spent, done = min(best, dt), spent + dt, done + 1
    return len(batch) / max(best, 1e-12)


def parity(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """max |Δ logit| and max |Δ sigmoid(logit)| between two logit tensors of the same shape."""
    reference, other = reference.float(), other.float().reshape(reference.shape)
    return {"max_abs_logit": float((reference - other).abs().max()),
            "max_abs_prob": float((torch.sigmoid(reference) - torch.sigmoid(other)).abs().max())}


@dataclass
class Tolerance:
    """Parity limits against eager: a runtime passes when both maxima are within them."""

    logit: float = 0.05
    prob: float = 0.01

    @classmethod
    def of(cls, value: "Tolerance | float | tuple[float, float] | dict | None") -> "Tolerance":
        if value is None:
            return cls()
        if isinstance(value, Tolerance):
            return value
        if isinstance(value, dict):
            return cls(**value)
        if isinstance(value, (tuple, list)):
            return cls(float(value[0]), float(value[1]))
        return cls(logit=float("inf"), prob=float(value))


@dataclass
class Selection:
    name: str
    runner: Runner
    onnx: bytes | None
    report: list[dict[str, Any]] = field(default_factory=list)
    threads: int = 1
    tolerance: Tolerance = field(default_factory=Tolerance)

    def record(self) -> dict[str, Any]:
        """The JSON record stored under ``config.json``'s ``runtime`` key."""
        return {"name": self.name, "threads": self.threads,
                "tolerance": {k: (v if math.isfinite(v) else None)  # None = no limit (strict JSON has no inf)
                              for k, v in (("logit", self.tolerance.logit), ("prob", self.tolerance.prob))},
                "measured": self.report}


def select_runtime(module: nn.Module, example_batch: torch.Tensor,
                   calibration_batches: Sequence[torch.Tensor] | None = None,
                   tolerance: Tolerance | float | tuple[float, float] | dict | None = None,
                   candidates: Sequence[str] = DEFAULT_CANDIDATES, parity_batches: Sequence[torch.Tensor] | None = None,
                   repeats: int = 3, leaf_modules: Sequence[type] = ()) -> Selection:
    """Measure each candidate on ``example_batch``; keep the fastest whose outputs match eager within
    ``tolerance`` on ``parity_batches`` (default: the example batch). ``eager`` always qualifies."""
    tol = Tolerance.of(tolerance)
    module.eval()
    checks = list(parity_batches) if parity_batches else [example_batch]
    with torch.inference_mode():
        refs = [module(b) for b in checks]
    report: list[dict[str, Any]] = []
    best: tuple[float, str, Built] | None = None
    for name in dict.fromkeys(["eager", *candidates]):  # eager first: it is the fallback
        row: dict[str, Any] = {"runtime": name}
        try:
            t0 = time.perf_counter()
            built = build_runner(name, module, example_batch, calibration_batches, leaf_modules=leaf_modules)
            row["build_s"] = round(time.perf_counter() - t0, 2)
            diffs = [parity(r, built.runner(b)) for r, b in zip(refs, checks)]
            row["max_abs_logit"] = max(d["max_abs_logit"] for d in diffs)
            row["max_abs_prob"] = max(d["max_abs_prob"] for d in diffs)
            row["images_per_s"] = round(images_per_second(built.runner, example_batch, repeats=repeats), 2)
        except RuntimeUnavailable as exc:
            row.update(ok=False, reason=str(exc))
            log.warning("runtime %s not used: %s", name, exc)
            report.append(row)
            continue
        except Exception as exc:  # noqa: BLE001 - a failing runtime must not take down the selection
            row.update(ok=False, reason=f"{type(exc).__name__}: {exc}")
            log.warning("runtime %s failed, not used: %s: %s", name, type(exc).__name__, exc)
            report.append(row)
            continue
        ok = row["max_abs_logit"] <= tol.logit and row["max_abs_prob"] <= tol.prob
        row["ok"] = ok
        if not ok:
            row["reason"] = (f"parity: max |Δlogit| {row['max_abs_logit']:.3g} (limit {tol.logit:g}), "
                             f"max |Δprob| {row['max_abs_prob']:.3g} (limit {tol.prob:g})")
            log.warning("runtime %s not used: %s", name, row["reason"])
        elif best is None or row["images_per_s"] > best[0]:
            best = (row["images_per_s"], name, built)
        report.append(row)
    assert best is not None  # eager always passes its own parity
    log.info("runtime chosen: %s (%.1f images/s)", best[1], best[0])
    return Selection(best[1], best[2].runner, best[2].onnx, report, torch.get_num_threads(), tol)


# ---------------------------------------------------------------------------------- persistence
def weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors (names, shapes, bytes): ties a stored runtime graph to its weights."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous().reshape(-1)
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_runtime(directory: str | Path, selection: Selection, digest: str,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record ``selection`` in a model directory: ``config.json`` ``runtime`` (+ ``runtime.onnx``)."""
    directory = Path(directory)
    cfg_path = directory / "config.json"
    cfg = json.loads(cfg_path.read_text())
    record = {**selection.record(), **(extra or {}), "weights_sha256": digest}
    onnx_path = directory / ONNX_FILE
    if selection.onnx is not None:
        onnx_path.write_bytes(selection.onnx)
        record["file"] = ONNX_FILE
        record["file_sha256"] = hashlib.sha256(selection.onnx).hexdigest()
    elif onnx_path.exists():
        onnx_path.unlink()
    cfg["runtime"] = record
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    return record


def load_runner(record: dict[str, Any] | None, module: nn.Module, directory: str | Path | None, digest: str,
                leaf_modules: Sequence[type] = ()) -> Runner | None:
    """The recorded runtime for ``module``, or None (use eager) with a log line saying why."""
    if not record or record.get("name", "eager") == "eager":
        return None
    name = str(record["name"])
    where = f" ({directory})" if directory else ""
    if record.get("weights_sha256") and record["weights_sha256"] != digest:
        log.warning("recorded runtime %s%s was chosen for other weights; using eager", name, where)
        return None
    try:
        if name in ("onnx_fp32", "onnx_int8"):
            if directory is None:
                raise RuntimeUnavailable("the model directory is unknown, so its runtime.onnx cannot be read")
            path = Path(directory) / str(record.get("file", ONNX_FILE))
            if not path.is_file():
                raise RuntimeUnavailable(f"{path} is missing")
            graph = path.read_bytes()
            if record.get("file_sha256") and hashlib.sha256(graph).hexdigest() != record["file_sha256"]:
                raise RuntimeUnavailable(f"{path} does not match the sha256 recorded in config.json")
            return ort_runner(graph, name)
        if name == "eager_fused":
            return fused_runner(module, leaf_modules)
        if name == "compile":
            return compiled_runner(module)
        raise RuntimeUnavailable(f"unknown runtime {name!r}")
    except RuntimeUnavailable as exc:
        # a core install without the runtime extra is normal: say so quietly; anything else is a warning
        level = logging.INFO if "not installed" in str(exc) else logging.WARNING
        log.log(level, "recorded runtime %s%s not available, using eager: %s", name, where, exc)
        return None


def optimise_model_dir(directory: str | Path, images: torch.Tensor, *, candidates: Sequence[str] = DEFAULT_CANDIDATES,
                       tolerance: Tolerance | float | tuple[float, float] | dict | None = None,
                       repeats: int = 3) -> dict[str, Any]:
    """Choose the fastest runtime that keeps parity for the model in ``directory`` and record it there.

    ``images``: real, preprocessed N×C×H×W images (validation images, not training ones); they are the
    int8 calibration set, the parity check set and (the first 8, or the first images' windows) the
    timing batch. The detector must offer ``runtime_spec(images)``. Returns the ``runtime`` record.
    """
    from .registry import load_detector

    det = load_detector(directory)
    if not hasattr(det, "runtime_spec"):
        raise ValueError(f"{directory}: the {det.name!r} detector has no inference runtime to choose")
    if len(images) == 0:
        raise ValueError("optimise needs at least one real image (none given)")
    spec = det.runtime_spec(images)
    tol = Tolerance.of(tolerance) if tolerance is not None else spec["tolerance"]
    sel = select_runtime(spec["module"], spec["example"], spec["calibration"], tol, candidates,
                         parity_batches=spec["parity"], repeats=repeats, leaf_modules=spec["leaf_modules"])
    sel.report = [{**r, "parity_images": int(len(images))} for r in sel.report]
    record = save_runtime(directory, sel, spec["digest"], spec["extra"])
    return record
