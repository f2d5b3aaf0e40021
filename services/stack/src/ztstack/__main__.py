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
    return p


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
