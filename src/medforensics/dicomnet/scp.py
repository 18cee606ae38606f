"""DICOM Storage SCP: receive images from a PACS/modality, acknowledge them once safely spooled, scan them.

``medforensics dicom-listen --ae-title MEDFORENSICS --port 11112`` runs :class:`DicomReceiver`, a
pynetdicom application entity that

- accepts every *image* storage SOP class (CT, MR, CR/DX/MG, US incl. multi-frame, NM, PET, XA,
  secondary capture incl. multi-frame, VL endoscopic/microscopic/photographic/whole-slide, …) in
  any transfer syntax pynetdicom knows (uncompressed LE/BE, deflated, JPEG baseline/extended/
  lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE, …) and answers C-ECHO;
- for each C-STORE: parses the data set's header (never its pixels; a deflated one in bounded
  chunks), refuses an instance whose decode would not fit the memory budget, writes the instance
  durably to the spool (:mod:`.spool`: fsync + atomic rename, mode 0600 in a 0700 folder) and only
  then answers ``0x0000``. Scoring is asynchronous: a dispatcher thread hands spooled instances,
  within the global decode budget (:class:`.guard.DecodeBudget`: bytes and concurrent decodes), to
  the scan engine (:class:`medforensics.engine.ScanEngine`, decoding in worker processes), which
  de-duplicates by :func:`medforensics.engine.content_key` (SOP Instance UID + decoded pixels: the
  same key as ``scan --db`` and the REST service, whatever the transfer syntax) and records the
  result with ``source="dicom"`` and path ``dicom://<calling AE>/<SOP Instance UID>``. The spool
  file is removed (or moved to ``<spool>/done`` with ``keep_spooled``) once the result is stored.
  Instances left in the spool when the receiver stopped or died are scored when it starts again.
- optionally POSTs flagged results (verdict ``fake``) — or all results — to a JSON webhook.
- judges every series (:mod:`.series`): once the association that carried it is released and its
  instances are scored, or after ``series_quiet_s`` seconds without a new instance, the series
  verdict (score, verdict, 3-D regions, header findings) is upserted into the store's ``series``
  table, logged, and sent to the webhook as a ``medforensics.series`` event (under the same
  flagged/all rule); a late instance re-opens the series and updates its row.

Who may talk to it: associations must be addressed to its AE title (unless ``require_called_aet``
is off), may be limited to listed calling AE titles (``calling_aets``) and peer addresses/networks
(``allowed_peers``, checked when the TCP connection is accepted); one peer holds at most
``max_per_peer`` connections and everyone together ``max_associations``; a connection that sends
no association request within ``acse_timeout`` seconds is closed, so idle sockets cannot lock
senders out for long.

Statuses: ``0x0000`` once the instance is spooled (its result, also an undecodable-pixels error,
follows in the store); ``0xC210`` when the data set cannot be parsed (recorded with the error);
``0xA700`` with an error comment when the instance is over the decode budget (recorded with the
error) or cannot be spooled (disk full: not recorded, the sender may retry). Malformed PDUs and
aborted associations are handled by pynetdicom and only end that association; the handler never
raises. Logs name SOP Instance UIDs only, never patient data.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..detectors.base import Detector
from ..results import ScanResult
from .guard import (DEFAULT_CONCURRENT_DECODES, DEFAULT_DECODE_BUDGET, DecodeBudget, PeerGate,
                    RefusedInstance, decode_cost, read_header)
from .series import DEFAULT_QUIET_S, SeriesTracker
from .spool import Spool, SpooledInstance

log = logging.getLogger(__name__)

DEFAULT_AE_TITLE = "MEDFORENSICS"
DEFAULT_PORT = 11112
DEFAULT_SPOOL = "~/.medforensics/dicom-spool"

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
    spooled: int = 0  # acknowledged (0x0000) and written to the spool
    resumed: int = 0  # found in the spool on start (from an earlier run)
    scored: int = 0  # decoded and scored
    ok: int = 0  # recorded with a score (freshly scored or answered from the store)
    cached: int = 0  # answered from the store (same content key, same model)
    errors: int = 0  # recorded with an error (undecodable pixels, unparsable data set, over budget)
    refused: int = 0  # over the decode budget (0xA700)
    failed: int = 0  # not recorded (spool or store unavailable; a spooled one is retried on restart)
    flagged: int = 0  # verdict "fake"
    echoes: int = 0
    series: int = 0  # series verdicts emitted (a re-evaluated series counts again)
    series_flagged: int = 0  # of which verdict "fake"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: float) -> None:
        with self._lock:
            for key, value in deltas.items():
                setattr(self, key, getattr(self, key) + value)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("received", "spooled", "resumed", "scored", "ok", "cached", "errors",
                                             "refused", "failed", "flagged", "echoes", "series", "series_flagged")}


class DicomReceiver:
    """A Storage SCP scanning every received image instance into a :class:`~medforensics.store.ResultStore`.

    ``on_result(record)`` is called (from a scan-engine thread) after each newly stored result.
    ``forward`` selects what goes to the webhook: ``"flagged"`` (verdict fake) or ``"all"``.
    ``spool_dir`` holds received instances until their result is stored (default: a folder under
    ``~/.medforensics``). ``max_decodes`` is the number of decodes at once (the scan engine's decode
    processes); ``decode_budget`` (bytes) bounds the summed estimated decode cost of the instances
    handed to the engine and not yet finished (at most ``max_in_flight``, default two batches), so
    it holds whichever of them are decoding. ``series_quiet_s`` is how long a series may go without a
    new instance before it is judged (:mod:`.series`); ``max_slices`` caps the instances kept and
    analysed per series; ``on_series(record)`` is called after each stored series verdict.
    """

    def __init__(self, detector: Detector, store: Any, *, ae_title: str = DEFAULT_AE_TITLE,
                 threshold: float | None = None, max_frames: int = 16, webhook: str | None = None,
                 forward: str = "flagged", require_called_aet: bool = True,
                 calling_aets: Iterable[str] | None = None, allowed_peers: Iterable[str] | None = None,
                 max_associations: int = 8, max_per_peer: int = 4, acse_timeout: float = 5.0,
                 network_timeout: float = 60.0, dimse_timeout: float = 60.0,
                 spool_dir: str | Path | None = None, keep_spooled: bool = False,
                 decode_budget: int = DEFAULT_DECODE_BUDGET, max_decodes: int = DEFAULT_CONCURRENT_DECODES,
                 batch_size: int = 16, max_in_flight: int | None = None,
                 on_result: Callable[[Any], None] | None = None, series_quiet_s: float = DEFAULT_QUIET_S,
                 max_slices: int | None = None, on_series: Callable[[Any], None] | None = None):
        from ..engine import model_fingerprint

        if forward not in ("flagged", "all"):
            raise ValueError(f"forward must be 'flagged' or 'all', got {forward!r}")
        if max_associations <= 0:
            raise ValueError(f"max_associations must be positive, got {max_associations}")
        self.detector = detector
        self.store = store
        self.ae_title = ae_title
        self.threshold = detector.threshold if threshold is None else float(threshold)
        self.max_frames = max_frames
        self.model_id = model_fingerprint(detector)
        self.forward = forward
        self.require_called_aet = require_called_aet
        self.calling_aets = [str(a).strip() for a in calling_aets or [] if str(a).strip()]
        self.max_associations = int(max_associations)
        self.timeouts = {"acse": float(acse_timeout), "network": float(network_timeout),
                         "dimse": float(dimse_timeout)}
        self.gate = PeerGate(allowed_peers, max_per_peer)
        if max_decodes <= 0:
            raise ValueError(f"max_decodes must be positive, got {max_decodes}")
        self.engine_workers = int(max_decodes)
        from ..io.budget import current_budget

        self.budget = DecodeBudget(decode_budget, max_in_flight or max(2 * batch_size, self.engine_workers),
                                   per_decode=current_budget())
        self.batch_size = batch_size
        self.spool = Spool(spool_dir if spool_dir is not None else Path(DEFAULT_SPOOL) / ae_title)
        self.keep_dir = self.spool.folder / "done" if keep_spooled else None
        self.on_result = on_result
        self.on_series = on_series
        if series_quiet_s < 0:
            raise ValueError(f"series_quiet_s must be >= 0, got {series_quiet_s}")
        self.series_quiet_s = float(series_quiet_s)
        from ..engine.series import DEFAULT_MAX_SLICES

        self.max_slices = DEFAULT_MAX_SLICES if max_slices is None else int(max_slices)
        if self.max_slices < 2:
            raise ValueError(f"max_slices must be at least 2, got {self.max_slices}")
        self.series: SeriesTracker | None = None
        self._assoc_series: dict[Any, set[str]] = {}  # association → series UIDs it carried
        self.stats = ReceiverStats()
        self.webhook = None
        if webhook:
            from .webhook import WebhookSender

            self.webhook = WebhookSender(webhook)
        self.ae = self._make_ae()
        self.server = None
        self.engine = None
        self.run_id: str | None = None
        self._rule = None
        self._started = 0.0
        self._queue: queue.Queue = queue.Queue()
        self._dispatcher: threading.Thread | None = None
        self._in_flight = 0  # handed to the dispatcher and not finished
        self._uid_lock = threading.Lock()  # guards _assoc_series
        self._idle = threading.Condition()
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ association setup
    def _make_ae(self):
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = self.require_called_aet
        if self.calling_aets:
            ae.require_calling_aet = self.calling_aets
        ae.maximum_associations = self.max_associations
        ae.acse_timeout = self.timeouts["acse"]  # also the ARTIM timer: a silent new connection is closed
        ae.network_timeout = self.timeouts["network"]
        ae.dimse_timeout = self.timeouts["dimse"]
        ae.add_supported_context(Verification)
        for uid in image_storage_classes().values():
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        return ae

    def _server_classes(self):
        from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

        gate = self.gate

        class Handler(RequestHandler):
            assoc = None

            def _create_association(self):
                self.assoc = super()._create_association()
                return self.assoc

            def handle(self) -> None:  # runs the association to its end, then frees the peer's slot
                try:
                    super().handle()
                    if self.assoc is not None:
                        self.assoc.join()
                finally:
                    gate.leave(str(self.client_address[0]))

        class Server(ThreadedAssociationServer):
            daemon_threads = True
            block_on_close = False
            request_queue_size = 64  # listen backlog: a burst is accepted (and judged) at once

            def verify_request(self, request, client_address) -> bool:
                return gate.admit(str(client_address[0]))

        return Server, Handler

    def start(self, host: str = "0.0.0.0", port: int = DEFAULT_PORT, *, block: bool = False):
        """Start scoring what is left in the spool, then listen (``block=False``: in background threads)."""
        from pynetdicom import evt

        from ..engine import ScanEngine
        from ..engine.dedup import StoreRule

        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, self.handle_echo),
                    (evt.EVT_ABORTED, self._on_abort), (evt.EVT_RELEASED, self._on_release),
                    (evt.EVT_CONN_CLOSE, self._on_close)]
        server_class, handler_class = self._server_classes()
        server = self.ae.make_server((host, port), evt_handlers=handlers, server_class=server_class,
                                     request_handler=handler_class)  # binds (OSError) before anything starts
        self._started = time.perf_counter()
        if self.store is not None and self.run_id is None:
            self.run_id = self.store.start_run("dicom", {"ae_title": self.ae_title, "port": port,
                                                         "model_id": self.model_id, "threshold": self.threshold})
            self._rule = StoreRule(self.store, self.detector, self.model_id, source="dicom")
        self.engine = ScanEngine(self.detector, threshold=self.threshold, max_frames=self.max_frames,
                                 batch_size=self.batch_size, workers=self.engine_workers, store=self.store,
                                 source="dicom", model_id=self.model_id, decode_budget=self.budget.per_decode,
                                 series=True, headers=True)
        self.series = SeriesTracker(self._emit_series, threshold=self.engine.threshold,
                                    fit=self.detector.preprocessing.fit,
                                    header_threshold=self.engine.header_threshold, quiet_s=self.series_quiet_s,
                                    max_slices=self.max_slices,
                                    reload=self._stored_instances if self.store is not None else None)
        self.series.start()
        self._stopping.clear()
        self._dispatcher = threading.Thread(target=self._dispatch, name="dicom-dispatch", daemon=True)
        self._dispatcher.start()
        left = self.spool.pending()
        if left:
            log.warning("scoring %d instance(s) left in the spool %s", len(left), self.spool.folder)
        for path in left:
            self.stats.add(resumed=1)
            self._enqueue(path, None)
        self.server = server
        self.ae._servers.append(server)
        log.info("DICOM receiver %s listening on %s:%s", self.ae_title, host, server.server_address[1])
        if block:
            try:
                self.server.serve_forever()
            except KeyboardInterrupt:
                pass
            return None
        threading.Thread(target=self.server.serve_forever, name="dicom-acceptor", daemon=True).start()
        return self.server

    @property
    def port(self) -> int | None:
        return None if self.server is None else self.server.server_address[1]

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every spooled instance handed to the engine is finished; ``False`` on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def stop(self, drain_timeout: float | None = 60.0) -> None:
        """Stop listening, finish scoring (up to ``drain_timeout`` s), deliver webhooks, close the run.

        Instances not scored by then stay in the spool and are scored on the next start.
        """
        if self.server is not None:
            server, self.server = self.server, None
            server.shutdown()
            for assoc in server.active_associations:
                if assoc.is_established:  # a silent connection ends by itself within acse_timeout
                    assoc.abort()
        if self._dispatcher is not None:
            if not self.wait_idle(drain_timeout):
                log.warning("stopping with instances still to score: they stay in the spool %s", self.spool.folder)
            self._stopping.set()
            self._queue.put(None)
            self._dispatcher.join()
            self._dispatcher = None
        if self.engine is not None:
            self.engine.close()  # finishes what it was given
            self.engine = None
        if self.series is not None:
            self.series.stop()  # every open series is judged on what arrived
            self.series = None
        if self.webhook is not None:
            self.webhook.close()
        if self.store is not None and self.run_id is not None:
            seconds = time.perf_counter() - self._started
            s = self.stats
            try:
                self.store.finish_run(self.run_id, n_ok=s.ok, n_error=s.errors + s.failed,
                                      n_cached=s.cached, seconds=seconds,
                                      images_per_s=s.scored / seconds if seconds > 0 else 0.0)
            except Exception as err:
                log.error("cannot close the receiver's run: %s", type(err).__name__)
            self.run_id = None

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
        with self._uid_lock:  # its series are judged after the quiet period
            self._assoc_series.pop(event.assoc, None)

    def _on_close(self, event) -> None:
        """The connection closed without release or abort: its series wait for the quiet period."""
        with self._uid_lock:
            self._assoc_series.pop(event.assoc, None)

    def _on_release(self, event) -> None:
        """The sender released the association: the series it carried are complete once scored."""
        with self._uid_lock:
            uids = self._assoc_series.pop(event.assoc, None)
        if uids and self.series is not None:
            self.series.release(uids)

    def handle_store(self, event):
        """C-STORE handler: never raises; returns the DIMSE status (a data set with an error comment)."""
        try:
            return self._store(event)
        except Exception:  # the last line of defence: one instance must never take the receiver down
            log.exception("unexpected failure while handling a C-STORE")
            self.stats.add(failed=1)
            return OUT_OF_RESOURCES

    def _store(self, event):
        self.stats.add(received=1)
        req = event.request
        sop_uid = str(req.AffectedSOPInstanceUID or "")
        caller = _caller(event)
        transfer_syntax = str(event.context.transfer_syntax)
        data = event.encoded_dataset(include_meta=False)
        source = f"dicom://{caller}/{sop_uid}"
        try:
            header = read_header(data, transfer_syntax, inflate_limit=self.budget.per_decode)
            cost = decode_cost(header, self.max_frames, len(data))
            self.budget.check(cost)
        except RefusedInstance as err:
            log.warning("instance %s refused: %s", sop_uid, err.reason)
            self.stats.add(refused=1)
            self._record_failure(data, source, sop_uid, req, transfer_syntax, err.reason)
            return _status(OUT_OF_RESOURCES, err.comment)
        except Exception as err:
            reason = f"cannot parse the DICOM data set: {type(err).__name__}: {err}"
            log.warning("instance %s: %s", sop_uid, reason)
            self._record_failure(data, source, sop_uid, req, transfer_syntax, reason)
            return CANNOT_UNDERSTAND
        meta = event.file_meta
        if caller != "unknown":
            meta.SourceApplicationEntityTitle = caller
        try:
            path = self.spool.write(meta, data)
        except OSError as err:
            log.error("cannot spool instance %s: %s", sop_uid, err.strerror or type(err).__name__)
            self.stats.add(failed=1)
            return _status(OUT_OF_RESOURCES, "cannot store the instance (receiver spool unavailable)")
        self.stats.add(spooled=1)
        series_uid = str(header.dataset.get("SeriesInstanceUID", "") or "").strip()
        if series_uid and self.series is not None:
            self.series.expect(path, series_uid)
            with self._uid_lock:
                self._assoc_series.setdefault(event.assoc, set()).add(series_uid)
        self._enqueue(path, cost)
        return SUCCESS

    def _record_failure(self, data: bytes, source: str, sop_uid: str, req, transfer_syntax: str,
                        reason: str) -> None:
        """Record an instance that was never spooled, keyed by the hash of its bytes as received."""
        from ..engine import file_sha256

        self.stats.add(errors=1)
        if self._rule is None:
            return
        result = ScanResult(path=source, threshold=self.threshold, model=self.model_id, error=reason,
                            meta={"sop_instance_uid": sop_uid, "sop_class_uid": str(req.AffectedSOPClassUID or ""),
                                  "transfer_syntax_uid": transfer_syntax})
        try:
            key = file_sha256(data)
            self._rule.record(result, key, self._rule.lookup(key), run_id=self.run_id)
        except Exception as err:
            log.error("cannot record instance %s: %s", sop_uid, type(err).__name__)
            self.stats.add(failed=1)

    # ------------------------------------------------------------------ asynchronous scoring
    def _enqueue(self, path: Path, cost: int | None) -> None:
        with self._idle:
            self._in_flight += 1
        self._queue.put((path, cost))

    def _finished_one(self, path: Path | None = None, result: ScanResult | None = None) -> None:
        if path is not None and self.series is not None:
            self.series.done(path, result)  # the instance joins its series (or, failed, is no longer awaited)
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def _dispatch(self) -> None:
        """Hand spooled instances to the engine, oldest first, each once its decode fits the budget.

        Instances with the same content key (a re-send, another transfer syntax) handed over together
        are scored once by the engine: the others are answered with the first's row, not added.
        """
        from ..engine import ScanInput

        while True:
            item = self._queue.get()
            if item is None or self._stopping.is_set():
                return
            path, cost = item
            try:
                inst = self.spool.describe(path)
                if cost is None:
                    cost = _file_cost(path, inst.transfer_syntax_uid, self.max_frames, self.budget.per_decode)
                while not self.budget.acquire(cost, timeout=0.5):
                    if self._stopping.is_set():
                        self._finished_one()
                        return
            except RefusedInstance as err:  # a resumed instance over today's budget: set aside, named
                log.error("spooled instance %s refused: %s; moved to %s", path.name, err.reason,
                          self.spool.folder / "refused")
                self.stats.add(refused=1, errors=1)
                self.spool.remove(path, keep_in=self.spool.folder / "refused")
                self._finished_one(path)
                continue
            except Exception as err:
                log.error("cannot read spooled file %s: %s", path.name, err)
                self.stats.add(failed=1)
                self.spool.remove(path, keep_in=self.spool.folder / "unreadable")
                self._finished_one(path)
                continue
            try:
                future = self.engine.submit(ScanInput(Path(path), name=inst.source))
            except Exception as err:
                log.error("cannot queue %s: %s", inst.sop_instance_uid, err)
                self.budget.release(cost)
                self.stats.add(failed=1)
                self._finished_one(path)
                continue
            future.add_done_callback(lambda fut, inst=inst, cost=cost: self._done(inst, cost, fut))

    def _done(self, inst: SpooledInstance, cost: int, future) -> None:
        """The engine finished one instance: account for it, drop it from the spool, forward it."""
        self.budget.release(cost)
        joined = None  # the result that joins its series
        try:
            try:
                result: ScanResult = future.result()
            except Exception as err:
                log.error("scoring %s failed: %s (kept in the spool)", inst.sop_instance_uid, err)
                self.stats.add(failed=1)
                return
            if self.store is not None and result.scan_id is None:
                log.error("instance %s not recorded: %s (kept in the spool)", inst.sop_instance_uid, result.error)
                self.stats.add(failed=1)
                return
            self.spool.remove(inst.path, keep_in=self.keep_dir)
            joined = result if result.ok else None
            if result.cached:
                self.stats.add(cached=1, ok=result.ok)
                log.info("instance %s already recorded (%s)", inst.sop_instance_uid, result.scan_id)
                return
            self.stats.add(scored=result.ok, ok=result.ok, errors=not result.ok, flagged=result.verdict == "fake")
            log.info("instance %s (%s): %s", inst.sop_instance_uid, result.modality or "?",
                     f"{result.verdict} score={result.score:.4f}" if result.ok else f"error: {result.error}")
            rec = self.store.get(result.scan_id) if self.store is not None else None
            if rec is None:
                return
            self._forward(rec)
            if self.on_result is not None:
                try:
                    self.on_result(rec)
                except Exception:
                    log.exception("on_result callback failed")
        except Exception:
            log.exception("unexpected failure after scoring %s", inst.sop_instance_uid)
        finally:
            self._finished_one(inst.path, joined)

    # ------------------------------------------------------------------ series verdicts
    def _stored_instances(self, series_uid: str) -> list[ScanResult]:
        """A re-opened series' earlier instances, from the store (scores and positions, no evidence maps)."""
        return [rec.to_result(threshold=self.threshold)
                for rec in self.store.series_instances(series_uid, model_id=self.model_id)]

    def _emit_series(self, record: dict[str, Any]) -> None:
        """A series is judged (tracker thread): store it, log it, forward it."""
        uid = record.get("series_uid")
        self.stats.add(series=1, series_flagged=record["verdict"] == "fake")
        log.info("series %s (%s, %d slices): %s score=%.4f, %d region(s)", uid, record.get("modality") or "?",
                 record["n_slices"], record["verdict"], record["score"], len(record.get("regions") or []))
        payload: Any = {k: v for k, v in record.items() if k != "slices"}
        if self.store is not None:
            try:
                payload = self.store.upsert_series(record, model_id=self.model_id, source="dicom",
                                                   threshold=self.threshold)
            except Exception as err:
                log.error("cannot record the verdict of series %s: %s: %s", uid, type(err).__name__, err)
                self.stats.add(failed=1)
                return
        if self.webhook is not None and (self.forward == "all" or record["verdict"] == "fake"):
            self.webhook.submit({"event": "medforensics.series",
                                 "series": payload.to_dict() if hasattr(payload, "to_dict") else payload})
        if self.on_series is not None:
            try:
                self.on_series(payload)
            except Exception:
                log.exception("on_series callback failed")

    def _forward(self, rec) -> None:
        if self.webhook is None or not rec.ok:
            return
        if self.forward == "flagged" and rec.verdict != "fake":
            return
        payload = rec.to_dict()
        payload.pop("patient_name", None)  # names never leave the store
        self.webhook.submit({"event": "medforensics.flagged" if rec.verdict == "fake" else "medforensics.result",
                             "result": payload})


def _file_cost(path: Path, transfer_syntax: str, max_frames: int, inflate_limit: int) -> int:
    """Decode cost of a spooled file, parsed from the data set after its File Meta group."""
    import struct

    raw = Path(path).read_bytes()
    if raw[128:132] != b"DICM" or raw[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("not a spooled DICOM file (no File Meta group length)")
    (group_length,) = struct.unpack("<I", raw[140:144])
    data = raw[144 + group_length:]
    return decode_cost(read_header(data, transfer_syntax, inflate_limit=inflate_limit), max_frames, len(data))


def _status(code: int, comment: str):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]  # LO: at most 64 characters
    return ds


def _caller(event) -> str:
    try:
        return str(event.assoc.requestor.ae_title).strip() or "unknown"
    except Exception:
        return "unknown"


def storescu_profile(files: list[str | Path], cfg_path: str | Path, profile: str = "MedForensics") -> Path:
    """Write a dcmtk ``storescu`` association profile proposing each file's own SOP class and transfer syntax.

    ``storescu`` otherwise proposes uncompressed syntaxes only and cannot send JPEG / JPEG 2000 / RLE
    files without transcoding. Use: ``storescu -xf <cfg_path> MedForensics -aec MEDFORENSICS host port files…``.
    At most 128 distinct (SOP class, transfer syntax) pairs fit one association. A file that cannot be
    read (or lacks a SOP class / transfer syntax) is logged by name and left out.
    """
    import pydicom

    pairs: dict[tuple[str, str], None] = {}
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            meta = getattr(ds, "file_meta", None)
            sop = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
            ts = meta.get("TransferSyntaxUID") if meta is not None else None
            if not sop or not ts:
                raise ValueError("no " + ("SOP class UID" if not sop else "transfer syntax UID"))
        except Exception as err:
            log.warning("storescu profile: skipping %s: %s: %s", f, type(err).__name__, err)
            continue
        pairs[(str(sop), str(ts))] = None
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
