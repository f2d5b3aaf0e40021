"""Ship audit messages to an audit record repository: syslog over TLS (IHE ATNA).

Every message is first written to a local spool directory (one file per message, written then
renamed, so a crash never leaves half a message); a background task sends spooled files in order
over one TLS connection and deletes each file once written to the socket. A repository outage
therefore loses nothing: files wait in the spool and the task retries with a bounded backoff.
Several worker processes share one spool: a sender claims a file by renaming it (atomic), and
files claimed by a process that died are put back on start.

Format: RFC 5424 `<85>1 TIMESTAMP HOST APP PROCID IHE+RFC-3881 - <AuditMessage...>` (PRI 85 =
facility 10 security/authorization, severity 5 notice; no byte-order mark, per IHE ITI TF-2
3.20.6), framed per RFC 5425 section 4.3 as `MSG-LEN SP SYSLOG-MSG` (octet counting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from datetime import datetime
from pathlib import Path

from .messages import utc_timestamp

log = logging.getLogger(__name__)

PRI = 85  # facility 10 (security/authorization) * 8 + severity 5 (notice)
MSGID = "IHE+RFC-3881"
_SUFFIX = ".msg"
_CLAIMED = ".sending-"


def rfc5424(xml: str, *, app: str, host: str, procid: str, now: datetime) -> bytes:
    """One RFC 5424 message carrying an audit message (no structured data)."""
    fields = (utc_timestamp(now), _field(host), _field(app), _field(procid), MSGID, "-")
    return f"<{PRI}>1 {' '.join(fields)} {xml}".encode()


def frame(message: bytes) -> bytes:
    """RFC 5425 section 4.3 octet-counting: the length in ASCII digits, a space, the message."""
    return str(len(message)).encode("ascii") + b" " + message


def _field(value: str) -> str:
    # RFC 5424 header fields are printable US-ASCII without spaces; "-" is the nil value.
    cleaned = "".join(ch for ch in value if 33 <= ord(ch) <= 126)
    return cleaned[:48] or "-"


class Spool:
    """A directory of messages waiting to be sent, oldest first."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._counter = 0
        self._prepared = False

    def prepare(self) -> None:
        """Create the directory and put back files claimed by processes that died."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._recover_claims()
        self._prepared = True

    def put(self, message: bytes) -> Path:
        if not self._prepared:
            self.prepare()
        self._counter += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._counter:08d}"
        tmp = self.directory / f".{name}.tmp"
        final = self.directory / f"{name}{_SUFFIX}"
        with open(tmp, "wb") as handle:
            handle.write(message)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        return final

    def pending(self) -> list[Path]:
        if not self.directory.exists():
            return []
        return sorted(p for p in self.directory.iterdir() if p.name.endswith(_SUFFIX))

    def claim(self, path: Path) -> Path | None:
        claimed = path.with_name(path.name + _CLAIMED + str(os.getpid()))
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return None  # another worker took it
        return claimed

    @staticmethod
    def release(claimed: Path) -> None:
        original = claimed.name.split(_CLAIMED)[0]
        with contextlib.suppress(FileNotFoundError):
            os.rename(claimed, claimed.with_name(original))

    def _recover_claims(self) -> None:
        for path in self.directory.iterdir():
            if _CLAIMED not in path.name:
                continue
            pid = int(path.name.rsplit("-", 1)[1]) if path.name[-1].isdigit() else 0
            if pid == os.getpid() or not _alive(pid):
                self.release(path)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SyslogShipper:
    """Background sender: spool -> TLS syslog receiver, with bounded exponential backoff."""

    def __init__(
        self,
        spool: Spool,
        host: str,
        port: int,
        tls: ssl.SSLContext,
        *,
        app: str,
        max_backoff: float = 30.0,
        poll_seconds: float = 1.0,
    ) -> None:
        self.spool = spool
        self.host = host
        self.port = port
        self.tls = tls
        self.app = app
        self.max_backoff = max_backoff
        self.poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @staticmethod
    def tls_context(
        ca_cert: Path, client_cert: Path | None, client_key: Path | None
    ) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(ca_cert))
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # PS3.15 B.12, RFC 5425 section 5
        if client_cert is not None:
            context.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
        return context

    def message(self, xml: str, now: datetime) -> bytes:
        host, procid = socket.gethostname(), str(os.getpid())
        return rfc5424(xml, app=self.app, host=host, procid=procid, now=now)

    def enqueue(self, xml: str, now: datetime) -> None:
        """Spool one message (synchronously: it is on disk before the request is answered)."""
        self.spool.put(self.message(xml, now))

    def wake(self) -> None:
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-syslog")

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self.drain()
                backoff = 0.5
            except (TimeoutError, OSError, ssl.SSLError) as exc:
                log.warning("audit syslog delivery failed, will retry: %s", exc.__class__.__name__)
                await self._disconnect()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def drain(self) -> int:
        """Send every spooled message; raises on a connection error (claims are released)."""
        sent = 0
        for path in self.spool.pending():
            claimed = self.spool.claim(path)
            if claimed is None:
                continue
            try:
                data = claimed.read_bytes()
                writer = await self._connect()
                writer.write(frame(data))
                await asyncio.wait_for(writer.drain(), 10)
            except BaseException:
                self.spool.release(claimed)
                raise
            claimed.unlink()
            sent += 1
        return sent

    async def _connect(self) -> asyncio.StreamWriter:
        # A repository that restarted closed our connection: its EOF is already in the reader.
        # Writing into that connection would "succeed" and lose the message, so reconnect.
        alive = self._reader is not None and not self._reader.at_eof()
        if self._writer is not None and not self._writer.is_closing() and alive:
            return self._writer
        await self._disconnect()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self.tls, server_hostname=self.host),
            10,
        )
        self._reader, self._writer = reader, writer
        return writer

    async def _disconnect(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def close(self, flush_seconds: float = 2.0) -> None:
        """Try to send what is spooled for a short while, then stop; the rest stays spooled."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.drain(), flush_seconds)
        await self._disconnect()
