"""`python -m ztstack up|down|status|logs --run-dir DIR` (see docs/stack.md)."""

from __future__ import annotations

import argparse
import sys

from . import launcher
from .errors import StackError
from .rundir import RunDir


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ztstack", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "start the stack (idempotent)"),
        ("down", "stop the recorded processes"),
        ("status", "show what runs where"),
        ("logs", "show the tail of every service log"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--run-dir", default=".run", help="the run directory (default .run)")
        if name == "up":
            sp.add_argument("--stack", choices=["auto", "native", "compose"], default="auto")
            sp.add_argument(
                "--ports", choices=["default", "auto"], default="default",
                help="default: 8443/8080/9443/8042/4242; auto: free loopback ports",
            )  # fmt: skip
            sp.add_argument(
                "--only", default="",
                help="comma-separated subset: orthanc,idp,gateway (for development)",
            )  # fmt: skip
        if name == "down":
            sp.add_argument("--clean", action="store_true", help="also remove the run directory")
        if name == "logs":
            sp.add_argument("--lines", type=int, default=20)
    bridge = sub.add_parser("bridge", help="TLS bridge for a legacy modality (docs/exposure.md)")
    bridge.add_argument("action", choices=["add", "remove", "list"])
    bridge.add_argument("--run-dir", default=".run")
    bridge.add_argument("--name", help="the legacy device (lower case, digits, dashes)")
    bridge.add_argument("--ae-title", help="the modality's calling AE title")
    bridge.add_argument("--modality-host", help="the modality's one IP address")
    bridge.add_argument("--listen", help="HOST:PORT of the bridge in the modality's segment")
    bridge.add_argument("--bridge-ae-title", default="ZTBRIDGE", help="called AE (ZTBRIDGE)")
    return p


def _bridge(args: argparse.Namespace, run: RunDir) -> int:
    import json

    from . import gateway

    if args.action == "list":
        print(json.dumps(gateway.legacy_devices(run), indent=2))
        return 0
    if not args.name:
        raise StackError("bridge: --name is required")
    if args.action == "remove":
        return launcher.bridge_remove(run, args.name)
    if not (args.ae_title and args.modality_host and args.listen):
        raise StackError("bridge add: --ae-title, --modality-host and --listen are required")
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise StackError("bridge add: --listen must be HOST:PORT")
    device = {
        "name": args.name,
        "ae_title": args.ae_title,
        "host": args.modality_host,
        "listen_host": host,
        "listen_port": int(port),
        "bridge_ae_title": args.bridge_ae_title,
    }
    return launcher.bridge_add(run, device)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    run = RunDir.at(args.run_dir)
    try:
        if args.command == "up":
            only = {s.strip() for s in args.only.split(",") if s.strip()} or None
            unknown = (only or set()) - {"orthanc", "idp", "gateway"}
            if unknown:
                raise StackError(f"--only: unknown part(s) {sorted(unknown)}",
                                 "use orthanc, idp, gateway")  # fmt: skip
            return launcher.up(run, args.stack, args.ports, only)
        if args.command == "bridge":
            return _bridge(args, run)
        if args.command == "down":
            return launcher.down(run, args.clean)
        if args.command == "status":
            return launcher.status(run)
        return launcher.logs(run, args.lines)
    except StackError as e:
        print(f"[ztstack] error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
