"""``medforensics serve``: the REST service and web page (FastAPI + uvicorn), and its API tokens."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, require_extra

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind (keep loopback behind a TLS reverse proxy)."),
    port: int = typer.Option(8000, help="TCP port."),
    db: str | None = typer.Option(None, "--db", help="Results store URL (sqlite:///file.db, postgresql://…) or file."),
    model: str = typer.Option("default", "--model", "-m", help="Shipped model name or model directory."),
    threshold: float | None = typer.Option(None, help="Override the model's calibrated threshold."),
    tokens_file: Path | None = typer.Option(None, help="API token digests (default ~/.medforensics/tokens.json)."),
    create_token: str | None = typer.Option(None, "--create-token", metavar="NAME",
                                            help="Create an API token called NAME, print it once, and exit."),
    revoke_token: str | None = typer.Option(None, "--revoke-token", metavar="NAME", help="Revoke a token and exit."),
    list_tokens: bool = typer.Option(False, "--list-tokens", help="List token names and exit."),
    max_upload_mb: float = typer.Option(64.0, help="Largest request body (MiB); larger → 413."),
    max_files: int = typer.Option(32, help="Most files (or paths) per request; more → 413."),
    timeout: float = typer.Option(120.0, "--timeout", help="Scoring deadline of one request (s)."),
    max_frames: int = typer.Option(16, help="Frames/slices scored per multi-frame file or volume."),
    allow_server_paths: bool = typer.Option(False, help='Accept JSON {"paths": [...]} of files on this server.'),
    allowed_root: list[Path] = typer.Option([], "--allowed-root", help="Folder server paths must lie in (repeatable)."),
    cors_origin: list[str] = typer.Option([], "--cors-origin", help="Allow this browser origin (repeatable; off by default)."),
    heatmap_dir: Path | None = typer.Option(None, help="Where previews and heat-maps are kept (default ~/.medforensics/previews)."),
    store_phi: bool = typer.Option(False, help="Store patient IDs/names and upload file names in clear (default: hashed/omitted)."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Disable API tokens (loopback hosts only; for local experiments)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Serve the REST API (/v1, OpenAPI at /docs) and the web page (/)."""
    from ..serve.auth import TokenStore
    from ..serve.settings import ServeSettings

    try:
        settings = ServeSettings.from_env(
            host=host, port=port, db_url=db, model=model, threshold=threshold, tokens_file=tokens_file,
            max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_files=max_files, request_timeout_s=timeout,
            max_frames=max_frames, allow_server_paths=allow_server_paths or None,
            allowed_roots=allowed_root or None, cors_origins=cors_origin or None, heatmap_dir=heatmap_dir,
            store_phi=store_phi or None, auth=False if no_auth else None)
    except ValueError as err:
        console.print(f"[red]error:[/] invalid settings: {err}")
        raise typer.Exit(2) from None
    tokens = TokenStore(settings.tokens_file)
    if create_token or revoke_token or list_tokens:
        _manage_tokens(tokens, create_token, revoke_token, list_tokens)
        return
    if not settings.auth and settings.host not in LOOPBACK:
        console.print("[red]error:[/] --no-auth is only allowed on a loopback host")
        raise typer.Exit(2)
    try:
        n_tokens = len(tokens) if settings.auth else 0
    except ValueError as err:  # a tokens file that is not valid JSON or has the wrong shape
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    if settings.auth and n_tokens == 0:
        console.print(f"[red]error:[/] no API tokens in {settings.tokens_file}; create one with "
                      "`medforensics serve --create-token NAME`")
        raise typer.Exit(2)
    if settings.allow_server_paths and not settings.allowed_roots:
        console.print("[red]error:[/] --allow-server-paths needs at least one --allowed-root")
        raise typer.Exit(2)

    require_extra("serve", "fastapi", "uvicorn", "python_multipart", "sqlalchemy", "alembic", what="medforensics serve")
    import uvicorn

    from ..serve.app import create_app
    from ..serve.middleware import uvicorn_options

    try:
        app = create_app(settings, tokens=tokens)
    except (FileNotFoundError, KeyError, ValueError) as err:
        console.print(f"[red]error:[/] cannot start: {err}")
        raise typer.Exit(2) from None
    console.print(f"serving on http://{settings.host}:{settings.port}/  (API docs: /docs)")
    uvicorn.run(app, host=settings.host, port=settings.port, timeout_keep_alive=5, server_header=False,
                **uvicorn_options(log_level))  # our access log (route templates), not uvicorn's (query strings)


def _manage_tokens(tokens, create: str | None, revoke: str | None, list_: bool) -> None:
    try:
        if create:
            token = tokens.create(create)
            console.print(f"token {create!r} created; its SHA-256 is stored in {tokens.path}. "
                          "Copy it now, it is not shown again:")
            print(token)  # stdout, alone on its line, so scripts can capture it
        if revoke:
            if not tokens.revoke(revoke):
                console.print(f"[red]error:[/] no token named {revoke!r}")
                raise typer.Exit(1)
            console.print(f"token {revoke!r} revoked")
        if list_:
            for name in tokens.names():
                print(name)
    except ValueError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
