"""``medforensics dicom-listen``: a DICOM Storage SCP that scans every received image into the results store."""

from __future__ import annotations

import logging
import signal
import threading

import typer

from .common import console, open_model


def dicom_listen(
    ae_title: str = typer.Option("MEDFORENSICS", "--ae-title", help="This receiver's AE title."),
    host: str = typer.Option("0.0.0.0", "--host", help="Address to listen on."),
    port: int = typer.Option(11112, "--port", help="TCP port to listen on."),
    model: str = typer.Option("default", "--model", "-m", help="Shipped model name or model directory."),
    threshold: float | None = typer.Option(None, help="Decision threshold (default: the model's calibrated one)."),
    max_frames: int = typer.Option(16, help="Frames scored per multi-frame instance."),
    db: str | None = typer.Option(None, "--db", envvar="MEDFORENSICS_DB", show_envvar=True,
                                  help="Results store URL (default: ~/.medforensics/results.db)."),
    webhook: str | None = typer.Option(None, "--webhook", help="POST results as JSON to this http(s) URL."),
    forward_flagged: bool = typer.Option(True, "--forward-flagged/--forward-all",
                                         help="Send only flagged (fake) results to the webhook, or all results."),
    store_phi: bool = typer.Option(False, "--store-phi", help="Keep patient ID/name in clear in the store."),
    any_called_aet: bool = typer.Option(False, "--any-called-aet",
                                        help="Accept associations addressed to any AE title."),
    calling_aet: list[str] = typer.Option([], "--calling-aet",
                                          help="Accept associations only from this calling AE title (repeatable)."),
    allow_peer: list[str] = typer.Option([], "--allow-peer",
                                         help="Accept connections only from this IP address or network, "
                                              "e.g. 10.1.2.3 or 10.1.0.0/16 (repeatable)."),
    max_associations: int = typer.Option(8, "--max-associations", min=1, help="Associations open at once."),
    max_per_peer: int = typer.Option(4, "--max-per-peer", min=1, help="Connections open at once from one address."),
    acse_timeout: float = typer.Option(5.0, "--acse-timeout", min=0.1,
                                       help="Seconds a new connection may wait before its association request."),
    spool: str = typer.Option("~/.medforensics/dicom-spool/<ae-title>", "--spool",
                              help="Folder holding received instances until their result is stored "
                                   "(left-overs are scored on start)."),
    keep_spooled: bool = typer.Option(False, "--keep-spooled",
                                      help="Keep scored instances (in <spool>/done) instead of deleting them."),
    decode_budget_mb: int = typer.Option(4096, "--decode-budget-mb", min=1,
                                         help="Memory (MiB) the instances in progress may need together "
                                              "(estimated from their headers); an instance needing more than "
                                              "this or MEDFORENSICS_DECODE_BUDGET is refused."),
    max_decodes: int = typer.Option(2, "--max-decodes", min=1, help="Decodes at once (decode worker processes)."),
    series_quiet_s: float = typer.Option(10.0, "--series-quiet-s", min=0.0,
                                         help="Judge a series once no instance of it arrived for this many seconds "
                                              "(it is judged at once when the association that carried it is "
                                              "released and its instances are scored)."),
    max_slices: int = typer.Option(512, "--max-slices", min=2,
                                   help="Guard: instances kept and analysed per series (the rest are counted)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every instance (UIDs only, no PHI)."),
) -> None:
    """Receive DICOM images (C-STORE, C-ECHO), scan each, record results; Ctrl-C stops."""
    try:
        from ..dicomnet.scp import DicomReceiver
        from ..store import ResultStore, redact_url
    except ModuleNotFoundError as err:
        console.print(f"[red]error:[/] dicom-listen needs pynetdicom, sqlalchemy and alembic "
                      f"(pip install 'medforensics[dicomnet]'): {err}")
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    detector = open_model(model)
    try:
        store = ResultStore(db, store_phi=store_phi)
    except Exception as err:
        console.print(f"[red]error:[/] cannot open the results store: {type(err).__name__}: {err}")
        raise typer.Exit(2) from None
    try:
        receiver = DicomReceiver(detector, store, ae_title=ae_title, threshold=threshold, max_frames=max_frames,
                                 webhook=webhook, forward="flagged" if forward_flagged else "all",
                                 require_called_aet=not any_called_aet, calling_aets=calling_aet,
                                 allowed_peers=allow_peer, max_associations=max_associations,
                                 max_per_peer=max_per_peer, acse_timeout=acse_timeout,
                                 spool_dir=None if spool.endswith("<ae-title>") else spool,
                                 keep_spooled=keep_spooled, decode_budget=decode_budget_mb << 20,
                                 max_decodes=max_decodes, series_quiet_s=series_quiet_s, max_slices=max_slices,
                                 on_series=lambda rec: console.print(
                                     f"series {rec.series_uid}  {rec.modality or '?':10s} {rec.verdict:5s} "
                                     f"{rec.score:.4f}  {rec.n_slices} slices, {len(rec.regions)} region(s)"),
                                 on_result=lambda rec: console.print(
                                     f"{rec.sop_instance_uid}  {rec.modality or '?':10s} "
                                     + (f"{rec.verdict:5s} {rec.score:.4f}" if rec.ok else f"error: {rec.error}")))
    except (ValueError, OSError) as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    try:
        receiver.start(host, port, block=False)
    except OSError as err:
        console.print(f"[red]error:[/] cannot listen on {host}:{port}: {err.strerror or err}")
        raise typer.Exit(2) from None
    console.print(f"{ae_title} listening on {host}:{receiver.port} (model {model}, store {redact_url(store.url)}, "
                  f"spool {receiver.spool.folder}); Ctrl-C stops")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        receiver.stop()
        store.close()
    s = receiver.stats
    left = len(receiver.spool.pending())
    console.print(f"stopped: {s.received} instances received, {s.resumed} resumed from the spool "
                  f"({s.scored} scored, {s.cached} already in the store, {s.errors} errors, {s.refused} refused, "
                  f"{s.flagged} flagged), {s.echoes} echoes, {s.series} series verdicts ({s.series_flagged} flagged)"
                  + (f"; {left} left in the spool {receiver.spool.folder} for the next start" if left else ""))


def register(app: typer.Typer) -> None:
    app.command("dicom-listen")(dicom_listen)
