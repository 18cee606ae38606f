"""DICOM Storage SCP: receive images from a PACS/modality, scan each instance, record the result.

``medforensics dicom-listen --ae-title MEDFORENSICS --port 11112`` runs :class:`DicomReceiver`, a
pynetdicom application entity that

- accepts every *image* storage SOP class (CT, MR, CR/DX/MG, US incl. multi-frame, NM, PET, XA,
  secondary capture incl. multi-frame, VL endoscopic/microscopic/photographic/whole-slide, …) in
  any transfer syntax pynetdicom knows (uncompressed LE/BE, deflated, JPEG baseline/extended/
  lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE, …) and answers C-ECHO;
- for each C-STORE: hashes the received data set, answers from the results store when the same
  content was already scored by the same model, otherwise writes the instance to a temporary DICOM
  file, decodes it with :mod:`medforensics.io` and scores it (``scan.score_frames``); the result is
  stored with ``source="dicom"`` and its SOP Instance UID;
- optionally POSTs flagged results (verdict ``fake``) — or all results — to a JSON webhook.

Statuses: ``0x0000`` once the instance is recorded, also when its pixels cannot be decoded (the
record then carries the error: the sender cannot fix that by re-sending); ``0xC210`` when the data
set itself cannot be parsed; ``0xA700`` when the result cannot be recorded (store unavailable; the
sender may retry). Malformed PDUs and aborted associations are handled by pynetdicom and only end
that association; the handler never raises.

The content hash of a received instance is the SHA-256 of the encoded data set as received
(without the File Meta group). Logs name SOP Instance UIDs and hashes only, never patient data.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..detectors.base import Detector
from ..io import UnreadableImageError, load_frames
from ..results import ScanResult
from ..scan import score_frames

log = logging.getLogger(__name__)

DEFAULT_AE_TITLE = "MEDFORENSICS"
DEFAULT_PORT = 11112

#: Status codes returned to the sender (PS3.4 B.2.3 / pynetdicom conventions).
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC210

#: Storage SOP classes that carry images but are not images medforensics can judge.
_NOT_IMAGES = ("RT Image", "Enhanced RT Image", "Enhanced Continuous RT Image", "Video", "Single Bit",
               "Ophthalmic Tomography", "Optical Coherence", "Photoacoustic", "3D Coordinates")


def image_storage_classes() -> dict[str, str]:
    """Name → UID of the image storage SOP classes the receiver accepts."""
    from pydicom.uid import UID
    from pynetdicom import AllStoragePresentationContexts

    out: dict[str, str] = {}
    for ctx in AllStoragePresentationContexts:
        name = UID(ctx.abstract_syntax).name
        if name.endswith("Image Storage") and not any(bad in name for bad in _NOT_IMAGES):
            out[name] = str(ctx.abstract_syntax)
    return out


@dataclass
class ReceiverStats:
    """Counters of a running receiver (thread-safe updates through :meth:`add`)."""

    received: int = 0  # C-STORE requests handled
    scored: int = 0  # instances decoded and scored
    cached: int = 0  # answered from the store
    errors: int = 0  # recorded with an error (undecodable pixels, unparsable data set)
    failed: int = 0  # not recorded (status != 0x0000)
    flagged: int = 0  # verdict "fake"
    echoes: int = 0
    seconds_scoring: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: float) -> None:
        with self._lock:
            for key, value in deltas.items():
                setattr(self, key, getattr(self, key) + value)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("received", "scored", "cached", "errors", "failed", "flagged",
                                             "echoes", "seconds_scoring")}


class DicomReceiver:
    """A Storage SCP scanning every received image instance into a :class:`~medforensics.store.ResultStore`.

    ``on_result(record)`` is called (from the association thread) after each stored result.
    ``forward`` selects what goes to the webhook: ``"flagged"`` (verdict fake) or ``"all"``.
    """

    def __init__(self, detector: Detector, store: Any, *, ae_title: str = DEFAULT_AE_TITLE,
                 threshold: float | None = None, max_frames: int = 16, webhook: str | None = None,
                 forward: str = "flagged", require_called_aet: bool = True, workdir: str | Path | None = None,
                 on_result: Callable[[Any], None] | None = None):
        from ..store import model_fingerprint

        if forward not in ("flagged", "all"):
            raise ValueError(f"forward must be 'flagged' or 'all', got {forward!r}")
        self.detector = detector
        self.store = store
        self.ae_title = ae_title
        self.threshold = detector.threshold if threshold is None else float(threshold)
        self.max_frames = max_frames
        self.model_id = model_fingerprint(detector)
        self.forward = forward
        self.require_called_aet = require_called_aet
        self.on_result = on_result
        self.stats = ReceiverStats()
        self._model_lock = threading.Lock()  # one model, scored by one association at a time
        self._tmp = tempfile.TemporaryDirectory(prefix="medforensics-scp-", dir=workdir)
        self.webhook = None
        if webhook:
            from .webhook import WebhookSender

            self.webhook = WebhookSender(webhook)
        self.ae = self._make_ae()
        self.server = None
        self.run_id: str | None = None
        self._started = 0.0

    # ------------------------------------------------------------------ association setup
    def _make_ae(self):
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = self.require_called_aet
        ae.maximum_associations = 16
        ae.network_timeout = 60
        ae.acse_timeout = 30
        ae.dimse_timeout = 120
        ae.add_supported_context(Verification)
        for uid in image_storage_classes().values():
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        return ae

    def start(self, host: str = "0.0.0.0", port: int = DEFAULT_PORT, *, block: bool = False):
        """Start listening (``block=False``: in background threads; returns the server)."""
        from pynetdicom import evt

        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, self.handle_echo),
                    (evt.EVT_ABORTED, self._on_abort)]
        self._started = time.perf_counter()
        if self.store is not None and self.run_id is None:
            self.run_id = self.store.start_run("dicom", {"ae_title": self.ae_title, "port": port,
                                                         "model_id": self.model_id, "threshold": self.threshold})
        log.info("DICOM receiver %s listening on %s:%s", self.ae_title, host, port)
        self.server = self.ae.start_server((host, port), block=block, evt_handlers=handlers)
        return self.server

    @property
    def port(self) -> int | None:
        return None if self.server is None else self.server.server_address[1]

    def stop(self) -> None:
        """Stop listening, deliver pending webhooks, close the run and remove temporary files."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        if self.webhook is not None:
            self.webhook.close()
        if self.store is not None and self.run_id is not None:
            seconds = time.perf_counter() - self._started
            s = self.stats
            self.store.finish_run(self.run_id, n_ok=s.received - s.errors - s.failed, n_error=s.errors + s.failed,
                                  n_cached=s.cached, seconds=seconds,
                                  images_per_s=s.scored / s.seconds_scoring if s.seconds_scoring else 0.0)
        self._tmp.cleanup()

    def __enter__(self) -> DicomReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ handlers
    def handle_echo(self, event) -> int:
        self.stats.add(echoes=1)
        log.info("C-ECHO from %s", _caller(event))
        return SUCCESS

    def _on_abort(self, event) -> None:
        log.warning("association with %s aborted", _caller(event))

    def handle_store(self, event) -> int:
        """C-STORE handler: never raises; returns the DIMSE status."""
        try:
            return self._store(event)
        except Exception:  # the last line of defence: one instance must never take the receiver down
            log.exception("unexpected failure while handling a C-STORE")
            self.stats.add(received=1, failed=1)
            return OUT_OF_RESOURCES

    def _store(self, event) -> int:
        from ..store import content_hash

        self.stats.add(received=1)
        req = event.request
        sop_uid = str(req.AffectedSOPInstanceUID or "")
        data = event.encoded_dataset(include_meta=False)
        digest = content_hash(data)
        source_path = f"dicom://{_caller(event)}/{sop_uid}"
        det = self.detector
        prev = None
        if self.store is not None:
            prev = self.store.find(content_hash=digest, detector=det.name, detector_version=det.version,
                                   model_id=self.model_id)
            if prev is not None and prev.ok:  # the same instance again: already recorded
                self.stats.add(cached=1)
                log.info("instance %s already recorded (%s)", sop_uid, prev.id)
                return SUCCESS

        status = SUCCESS
        patient_id = patient_name = None
        try:
            ds = event.dataset  # decodes the data set (not the pixels)
            patient_id = _text(ds.get("PatientID"))
            patient_name = _text(ds.get("PatientName"))
        except Exception as err:
            result = ScanResult(path=source_path, threshold=self.threshold, model=self.model_id,
                                error=f"cannot parse the DICOM data set: {type(err).__name__}: {err}")
            status = CANNOT_UNDERSTAND
        else:
            result = self._score(event, source_path, sop_uid)
        result.meta.setdefault("sop_instance_uid", sop_uid)
        result.meta.setdefault("sop_class_uid", str(req.AffectedSOPClassUID or ""))
        result.meta["transfer_syntax_uid"] = str(event.context.transfer_syntax)
        self.stats.add(errors=not result.ok, flagged=result.verdict == "fake")
        if self.store is None:
            return status
        if prev is not None and not result.ok:  # failed again: the stored error answers it (no duplicate row)
            self.stats.add(cached=1)
            return status
        try:
            rec = self.store.add(result, content_hash=digest, detector=det.name, detector_version=det.version,
                                 source="dicom", run_id=self.run_id, model_id=self.model_id,
                                 patient_id=patient_id, patient_name=patient_name)
        except Exception as err:
            log.error("cannot record instance %s: %s", sop_uid, type(err).__name__)
            self.stats.add(failed=1)
            return OUT_OF_RESOURCES
        log.info("instance %s (%s): %s", sop_uid, rec.modality or "?",
                 f"{rec.verdict} score={rec.score:.4f}" if rec.ok else f"error: {rec.error}")
        self._forward(rec)
        if self.on_result is not None:
            try:
                self.on_result(rec)
            except Exception:
                log.exception("on_result callback failed")
        return status

    def _score(self, event, source_path: str, sop_uid: str) -> ScanResult:
        """Write the instance to a temporary file, decode it with medforensics.io and score it."""
        fd, tmp = tempfile.mkstemp(suffix=".dcm", dir=self._tmp.name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(event.encoded_dataset(include_meta=True))
            try:
                frames = load_frames(tmp, max_frames=self.max_frames)
            except UnreadableImageError as err:
                return ScanResult(path=source_path, error=err.reason, threshold=self.threshold, model=self.model_id)
            t0 = time.perf_counter()
            with self._model_lock:
                result = score_frames(source_path, frames, self.detector, self.threshold, with_maps=False,
                                      model_id=self.model_id)
            self.stats.add(scored=1, seconds_scoring=time.perf_counter() - t0)
            return result
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def _forward(self, rec) -> None:
        if self.webhook is None or not rec.ok:
            return
        if self.forward == "flagged" and rec.verdict != "fake":
            return
        payload = rec.to_dict()
        payload.pop("patient_name", None)  # names never leave the store
        self.webhook.submit({"event": "medforensics.flagged" if rec.verdict == "fake" else "medforensics.result",
                             "result": payload})


def _caller(event) -> str:
    try:
        return str(event.assoc.requestor.ae_title).strip() or "unknown"
    except Exception:
        return "unknown"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def storescu_profile(files: list[str | Path], cfg_path: str | Path, profile: str = "MedForensics") -> Path:
    """Write a dcmtk ``storescu`` association profile proposing each file's own SOP class and transfer syntax.

    ``storescu`` otherwise proposes uncompressed syntaxes only and cannot send JPEG / JPEG 2000 / RLE
    files without transcoding. Use: ``storescu -xf <cfg_path> MedForensics -aec MEDFORENSICS host port files…``.
    At most 128 distinct (SOP class, transfer syntax) pairs fit one association.
    """
    import pydicom

    pairs: dict[tuple[str, str], None] = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        sop = str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID"))
        pairs[(sop, str(ds.file_meta.TransferSyntaxUID))] = None
    if len(pairs) > 128:
        raise ValueError(f"{len(pairs)} (SOP class, transfer syntax) pairs: more than one association can propose")
    syntaxes = sorted({ts for _, ts in pairs})
    key = {ts: f"TS{i}" for i, ts in enumerate(syntaxes)}
    lines = ["[[TransferSyntaxes]]"]
    for ts in syntaxes:
        lines += [f"[{key[ts]}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", f"[{profile}Contexts]"]
    lines += [f"PresentationContext{i + 1} = {sop}\\{key[ts]}" for i, (sop, ts) in enumerate(pairs)]
    lines += ["[[Profiles]]", f"[{profile}]", f"PresentationContexts = {profile}Contexts", ""]
    path = Path(cfg_path)
    path.write_text("\n".join(lines))
    return path
