"""Syslog over TLS (RFC 5424 + RFC 5425) with a spool: nothing is lost across an outage.

The test starts a tiny TLS syslog receiver on loopback with a CA and certificate it makes itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dicomweb_gateway.audit.syslog import Spool, SyslogShipper, frame, rfc5424

NOW = dt.datetime(2026, 1, 5, 10, 15, 0, 123000, tzinfo=dt.UTC)


def _pki(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for localhost/127.0.0.1."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test audit CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "srv.pem",
        directory / "srv.key",
    )
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


class Receiver:
    """RFC 5425 receiver: reads `MSG-LEN SP MSG` frames over TLS into `messages`."""

    def __init__(self, cert: Path, key: Path, port: int) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(cert, key)
        self.port = port
        self.messages: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.clients: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._client, "127.0.0.1", self.port, ssl=self.context
        )

    async def stop(self) -> None:
        """Stop like a restarting repository: listener and every open connection closed."""
        assert self.server is not None
        self.server.close()
        for writer in self.clients:
            writer.close()
        await self.server.wait_closed()
        await asyncio.sleep(0.1)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients.append(writer)
        try:
            while True:
                length = await reader.readuntil(b" ")
                self.messages.append(await reader.readexactly(int(length[:-1])))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def wait_for(self, count: int, seconds: float = 10) -> None:
        for _ in range(int(seconds * 20)):
            if len(self.messages) >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"received {len(self.messages)} of {count}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_rfc5424_message_and_rfc5425_frame() -> None:
    message = rfc5424("<AuditMessage/>", app="zt-gateway", host="gw 1", procid="42", now=NOW)
    assert message == (
        b"<85>1 2026-01-05T10:15:00.123Z gw1 zt-gateway 42 IHE+RFC-3881 - <AuditMessage/>"
    )
    assert not message.startswith(b"\xef\xbb\xbf")  # no byte-order mark (IHE ATNA)
    assert frame(message) == str(len(message)).encode() + b" " + message
    assert frame("é".encode()) == b"2 \xc3\xa9"  # octets, not characters


def test_outage_loses_nothing(tmp_path: Path) -> None:
    asyncio.run(_outage_loses_nothing(tmp_path))


async def _outage_loses_nothing(tmp_path: Path) -> None:
    ca, cert, key = _pki(tmp_path)
    port = _free_port()
    spool = Spool(tmp_path / "spool")
    tls = SyslogShipper.tls_context(ca, None, None)
    shipper = SyslogShipper(spool, "localhost", port, tls, app="zt-gateway", max_backoff=0.2)
    for n in range(3):
        shipper.enqueue(f"<AuditMessage n='{n}'/>", NOW)
    # The repository is down: sending fails, every message stays spooled.
    with pytest.raises(OSError):
        await shipper.drain()
    assert len(spool.pending()) == 3
    # Background delivery keeps retrying; the repository comes up and gets everything, in order.
    shipper.wake()
    await asyncio.sleep(0.3)
    receiver = Receiver(cert, key, port)
    await receiver.start()
    try:
        await receiver.wait_for(3)
        shipper.enqueue("<AuditMessage n='3'/>", NOW)
        shipper.wake()
        await receiver.wait_for(4)
    finally:
        await shipper.close()
        await receiver.stop()
    bodies = [m.split(b" - ", 1)[1] for m in receiver.messages]
    assert bodies == [f"<AuditMessage n='{n}'/>".encode() for n in range(4)]
    assert all(
        re.match(rb"^<85>1 \S+Z \S+ zt-gateway \d+ IHE\+RFC-3881 - ", m) for m in receiver.messages
    )
    assert spool.pending() == []


def test_repository_restart_loses_nothing(tmp_path: Path) -> None:
    asyncio.run(_restart(tmp_path))


async def _restart(tmp_path: Path) -> None:
    ca, cert, key = _pki(tmp_path)
    port = _free_port()
    receiver = Receiver(cert, key, port)
    await receiver.start()
    spool = Spool(tmp_path / "spool")
    shipper = SyslogShipper(
        spool, "localhost", port, SyslogShipper.tls_context(ca, None, None), app="gw"
    )
    try:
        shipper.enqueue("<AuditMessage n='0'/>", NOW)
        assert await shipper.drain() == 1
        await receiver.wait_for(1)
        await receiver.stop()  # the repository restarts; our connection is closed under us
        receiver = Receiver(cert, key, port)
        await receiver.start()
        shipper.enqueue("<AuditMessage n='1'/>", NOW)
        assert await shipper.drain() == 1
        await receiver.wait_for(1)
    finally:
        await shipper.close(flush_seconds=0.5)
        await receiver.stop()
    assert receiver.messages[0].endswith(b"<AuditMessage n='1'/>")


def test_untrusted_repository_is_refused(tmp_path: Path) -> None:
    """The receiver's certificate must chain to the configured CA: nothing goes elsewhere."""
    asyncio.run(_untrusted(tmp_path))


async def _untrusted(tmp_path: Path) -> None:
    _, cert, key = _pki(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    other_ca, _, _ = _pki(other)
    port = _free_port()
    receiver = Receiver(cert, key, port)
    await receiver.start()
    spool = Spool(tmp_path / "spool")
    shipper = SyslogShipper(
        spool, "localhost", port, SyslogShipper.tls_context(other_ca, None, None), app="gw"
    )
    shipper.enqueue("<AuditMessage/>", NOW)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await shipper.drain()
    finally:
        await shipper.close(flush_seconds=0.5)
        await receiver.stop()
    assert receiver.messages == []
    assert len(spool.pending()) == 1


def test_claims_of_dead_workers_are_put_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = spool.put(b"x")
    claimed = path.with_name(path.name + ".sending-999999999")
    path.rename(claimed)
    assert spool.pending() == []
    Spool(tmp_path).prepare()
    assert [p.name for p in spool.pending()] == [path.name]
