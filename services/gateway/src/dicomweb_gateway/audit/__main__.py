"""Audit store tools.

python -m dicomweb_gateway.audit verify --database-url URL
    Two separate kinds of findings, tamper evidence first:
    - the chain (and the patient/study relation): `FAIL record N altered|deleted|reordered ...`;
    - content: `CONTENT record N malformed: ...` (a message without the A.5.1 structure).
    Exit 0: chain intact and every record well-formed; 1: tamper evidence (whatever the
    content); 3: chain intact but some record malformed; 2: the store cannot be read.
python -m dicomweb_gateway.audit export --database-url URL [--format jsonl|xml] [--output F]
    Write every record (oldest first) for an outside audit repository or an investigator.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TextIO

from sqlalchemy.exc import SQLAlchemyError

from .store import AuditStore, AuditStoreError

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_UNREADABLE = 2
EXIT_MALFORMED = 3


def _verify(store: AuditStore, out: TextIO) -> int:
    # Tamper evidence is computed without looking at message content, and reported first, so
    # a malformed record can neither hide tampering nor be taken for it.
    tampering = store.verify()
    content = store.check_content()
    if tampering:
        for problem in tampering:
            print(f"FAIL {problem}", file=out)
    else:
        seq, digest = store.head()
        print(f"OK {seq} records, chain intact, head {digest}", file=out)
    for problem in content:
        print(f"CONTENT {problem}", file=out)
    if tampering:
        return EXIT_TAMPERED
    return EXIT_MALFORMED if content else EXIT_OK


def _export(store: AuditStore, fmt: str, out: TextIO) -> int:
    if fmt == "xml":
        # A stream of A.5 messages in one document; each keeps its chain position and hash.
        out.write('<?xml version="1.0" encoding="UTF-8"?>\n<AuditMessages>\n')
        for row in store.iter_all():
            out.write(f"<!-- seq={row['seq']} hash={row['hash']} -->\n{row['message']}\n")
        out.write("</AuditMessages>\n")
        return 0
    for row in store.iter_all():
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dicomweb_gateway.audit")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check the hash chain; name broken records")
    verify.add_argument("--database-url", required=True)
    export = commands.add_parser("export", help="write all records")
    export.add_argument("--database-url", required=True)
    export.add_argument("--format", choices=("jsonl", "xml"), default="jsonl")
    export.add_argument("--output", default="-")
    args = parser.parse_args(argv)
    store = AuditStore(args.database_url)
    try:
        if args.command == "verify":
            return _verify(store, sys.stdout)
        if args.output == "-":
            return _export(store, args.format, sys.stdout)
        with open(args.output, "w", encoding="utf-8") as handle:
            return _export(store, args.format, handle)
    except (AuditStoreError, SQLAlchemyError) as exc:
        print(f"ERROR cannot read the audit store: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    finally:
        store.dispose()


if __name__ == "__main__":
    sys.exit(main())
