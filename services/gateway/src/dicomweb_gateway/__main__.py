"""`python -m dicomweb_gateway serve --config FILE`, `redirect --port P --target URL`,
`dimse --config FILE`, `index rebuild --config FILE`, `conformance [--output FILE]` and
`security-statement --config FILE --stack stack.json [--output FILE]`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

from .settings import SettingsError, load_settings
from .tls import gateway_ssl_context


def serve(config_path: str) -> int:
    from .app import SETTINGS_ENV
    from .observe import configure_logging

    try:
        settings = load_settings(config_path)
    except SettingsError as exc:
        print(f"dicomweb-gateway: invalid settings\n{exc}", file=sys.stderr)
        return 2
    configure_logging()
    os.environ[SETTINGS_ENV] = os.path.abspath(config_path)
    common: dict[str, Any] = {
        "factory": True,
        "workers": settings.workers,
        "loop": "uvloop",
        "http": "httptools",
        "server_header": False,
        "date_header": True,
        "access_log": False,
        "log_config": None,
        "timeout_keep_alive": 30,
        "timeout_graceful_shutdown": 10,
    }
    if settings.listen.uds is not None:
        # Behind the edge: a Unix socket only nginx can reach (0600 in the run directory), so
        # the client address nginx writes in X-Forwarded-For is the only one there is.
        config = uvicorn.Config(
            "dicomweb_gateway.app:app_from_env",
            uds=str(settings.listen.uds),
            proxy_headers=True,
            forwarded_allow_ips="*",
            **common,
        )
    else:
        config = uvicorn.Config(
            "dicomweb_gateway.app:app_from_env",
            host=settings.listen.host,
            port=settings.listen.port,
            ssl_certfile=str(settings.tls.cert),
            ssl_keyfile=str(settings.tls.key),
            ssl_context_factory=gateway_ssl_context,
            proxy_headers=False,  # client addresses come from the socket, never from headers
            **common,
        )
    server = uvicorn.Server(config)
    uds = settings.listen.uds
    if uds is not None and uds.is_socket():
        uds.unlink()  # left by a process that was killed; nothing else creates it
    sock = config.bind_socket()
    if uds is not None:
        os.chmod(uds, 0o600)  # uvicorn makes it 0666: only the edge (same user) may connect
    if settings.workers > 1:
        from uvicorn.supervisors import Multiprocess

        Multiprocess(config, sockets=[sock]).run()
        return 0
    server.run(sockets=[sock])
    return 0 if server.started else 1


def edge_audit(config_path: str) -> int:
    from .audit import Auditor
    from .audit.edgelog import EdgeLogAuditor
    from .observe import configure_logging

    try:
        settings = load_settings(config_path)
    except SettingsError as exc:
        print(f"dicomweb-gateway edge-audit: invalid settings\n{exc}", file=sys.stderr)
        return 2
    if settings.edge is None or settings.edge.access_log is None:
        print("dicomweb-gateway edge-audit: no edge.access_log in the settings", file=sys.stderr)
        return 2
    configure_logging()
    auditor = Auditor.from_settings(settings)
    assert auditor.store is not None
    EdgeLogAuditor(auditor.store, auditor.participants, settings.edge.access_log).run()
    return 0


def redirect_app(target: str) -> Callable[[dict[str, Any], Any, Any], Awaitable[None]]:
    """A plain-HTTP ASGI app that only answers 301 to HTTPS with an empty body (NW-2).

    The request path is kept (query dropped: it might carry data); nothing is proxied.
    """
    base = target.rstrip("/")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope.get("path", "/")
        if not path.startswith("/") or path.startswith("//") or any(c in path for c in "\r\n"):
            path = "/"
        location = (base + path).encode("utf-8", "replace")
        await send(
            {
                "type": "http.response.start",
                "status": 301,
                "headers": [
                    (b"location", location),
                    (b"content-length", b"0"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    return app


def redirect(port: int, target: str, host: str = "127.0.0.1") -> int:
    if not target.startswith("https://"):
        print("dicomweb-gateway: --target must be an https URL", file=sys.stderr)
        return 2
    uvicorn.run(
        redirect_app(target),
        host=host,
        port=port,
        server_header=False,
        access_log=False,
        log_level="warning",
        lifespan="off",
    )
    return 0


def index_rebuild(config_path: str) -> int:
    """Re-read every study of the archive into the study index, with a progress line.

    Nothing is emptied first: every study is re-indexed in place (searches keep working), and
    at the end what the archive no longer holds is removed.
    """
    import asyncio
    import time

    from .archive import open_archive
    from .authorize import load_policy_files
    from .store import ChangeFeedPoller, PolicyStore

    try:
        settings = load_settings(config_path)
    except SettingsError as exc:
        print(f"dicomweb-gateway: invalid settings\n{exc}", file=sys.stderr)
        return 2
    _, rules = load_policy_files(settings.policy.file, settings.policy.ingest_rules_file)
    started = time.monotonic()

    def progress(done: int, total: int | None) -> None:
        rate = done / max(time.monotonic() - started, 1e-6)
        if total:
            width = 30
            filled = min(width, width * done // max(total, 1))
            bar = "#" * filled + "." * (width - filled)
            line = f"[{bar}] {done}/{total} studies ({100 * done // max(total, 1)}%)"
        else:
            line = f"{done} studies"
        print(f"\rindex rebuild: {line}, {rate:.0f}/s", end="", file=sys.stderr, flush=True)

    async def run() -> int:
        store = PolicyStore(settings.database_url)
        store.migrate()
        archive = open_archive(settings)
        try:
            poller = ChangeFeedPoller(archive.index_source, store, rules, 1.0)
            # A fresh pass from the start, every study re-read (force), then removals.
            await store.put_cursor(poller.reconciler.OFFSET, 0)
            await store.put_cursor(poller.reconciler.STARTED, 0)
            seen = await poller.reconciler.run_pass(force=True, progress=progress)
            count = await poller.indexer.index.count()
        finally:
            await archive.close()
            await store.close()
        print(f"\nindex rebuild: {seen} studies read, {count} indexed", file=sys.stderr)
        return 0

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomweb-gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="serve the gateway over HTTPS")
    p_serve.add_argument("--config", required=True, help="settings YAML file")
    p_check = sub.add_parser("check", help="validate a settings file and exit")
    p_check.add_argument("--config", required=True)
    p_redirect = sub.add_parser("redirect", help="plain-HTTP redirector to HTTPS")
    p_redirect.add_argument("--port", type=int, required=True)
    p_redirect.add_argument("--target", required=True, help="e.g. https://localhost:8443")
    p_redirect.add_argument("--host", default="127.0.0.1")
    p_dimse = sub.add_parser("dimse", help="serve the DIMSE front door (DICOM TLS)")
    p_dimse.add_argument("--config", required=True, help="settings YAML file")
    sub.add_parser("exposure", help="check which endpoints are exposed (docs/exposure.md)",
                   add_help=False)  # fmt: skip
    sub.add_parser("bridge", help="TLS bridge for one legacy modality (docs/exposure.md)",
                   add_help=False)  # fmt: skip
    sub.add_parser("devices", help="the device inventory (docs/exposure.md)", add_help=False)
    sub.add_parser("conformance", help="write docs/conformance.md", add_help=False)
    sub.add_parser("security-statement", help="write docs/security-statement.md from the "
                   "running configuration", add_help=False)  # fmt: skip
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("exposure", "bridge", "devices", "conformance", "security-statement"):
        return _delegate(argv[0], argv[1:])
    p_index = sub.add_parser("index", help="the study index")
    p_index.add_argument("operation", choices=["rebuild"])
    p_index.add_argument("--config", required=True, help="settings YAML file")
    p_edge = sub.add_parser("edge-audit", help="the edge's access log into the audit trail")
    p_edge.add_argument("--config", required=True, help="settings YAML file")
    args = parser.parse_args(argv)
    if args.command == "edge-audit":
        return edge_audit(args.config)
    if args.command == "index":
        return index_rebuild(args.config)
    if args.command == "dimse":
        from .dimse import serve as serve_dimse

        return serve_dimse(args.config)
    if args.command == "serve":
        return serve(args.config)
    if args.command == "check":
        try:
            load_settings(args.config)
        except SettingsError as exc:
            print(exc, file=sys.stderr)
            return 2
        print("settings ok")
        return 0
    return redirect(args.port, args.target, args.host)


def _delegate(command: str, argv: list[str]) -> int:
    """Subcommands with their own argument parsers."""
    if command == "exposure":
        from .exposure import main as exposure_main

        return exposure_main(argv)
    if command == "conformance":
        from .conformance import main as conformance_main

        return int(conformance_main(argv))
    if command == "security-statement":
        from .security_statement import main as statement_main

        return int(statement_main(argv))
    if command == "bridge":
        from .bridge import main as bridge_main

        return bridge_main(argv)
    from .devices import main as devices_main

    return devices_main(argv)


if __name__ == "__main__":
    sys.exit(main())
