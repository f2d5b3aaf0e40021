"""The DIMSE front door (DV-4): DICOM devices reach the archive only through the gateway.

A pynetdicom Storage SCP over TLS. It authenticates each device by two things that must agree:
its pinned TLS client certificate and its registered AE title (and address). It accepts C-ECHO
and C-STORE, nothing else. Each C-STORE goes through exactly the path a STOW-RS request takes
(`stow.validate_part` then `storage.store_parts`): the strict reader and its canonical
re-serialization, `decide()` for the device on the instance's study, the UID identity checks,
the post-store placement check, ingest labelling, and one PS3.15 A.5 audit message per
transfer (a Security Alert for every refusal and for every refused association). The archive
receives the result as STOW-RS over mutually authenticated TLS; it accepts no DICOM association
at all (Orthanc's DICOM server is off), so this is the only DICOM door.

pynetdicom serves each association on its own thread; the gateway's services are asyncio, so
they live on one event loop in a thread of their own and handlers wait for their coroutines.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import ssl
import sys
import threading
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRBigEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from .archive import Archive, open_archive
from .audit import Auditor
from .authorize import Authorizer
from .context import Action, Principal, RequestContext
from .errors import GatewayError
from .settings import DimseDevice, Settings, SettingsError, load_settings
from .storage import store_parts
from .stow import validate_part
from .tls import server_context

log = logging.getLogger("dicomweb_gateway.dimse")

T = TypeVar("T")

# PS3.4 table B.2-1 / PS3.7 C statuses a Storage SCP returns.
SUCCESS = 0x0000
REFUSED_NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110
DEVICE_ISSUER = "urn:zt:dimse"  # principals of devices are not tokens; audit names the issuer


@dataclass(frozen=True)
class Device:
    name: str
    ae_title: str
    host: str
    fingerprint: str  # SHA-256 of the pinned certificate (DER), hex
    principal: Principal


def _fingerprint(pem_file: Path) -> str:
    der = ssl.PEM_cert_to_DER_cert(pem_file.read_text(encoding="ascii"))
    return hashlib.sha256(der).hexdigest()


def load_devices(devices: list[DimseDevice]) -> dict[str, Device]:
    """fingerprint -> device: a certificate admits exactly its own device."""
    out: dict[str, Device] = {}
    for d in devices:
        principal = Principal(
            subject=d.name,
            issuer=DEVICE_ISSUER,
            client_id=d.client_id or d.name,
            scopes=frozenset(d.scopes),
        )
        fingerprint = _fingerprint(d.certificate)
        out[fingerprint] = Device(d.name, d.ae_title.strip(), d.host, fingerprint, principal)
    return out


def door_tls_context(settings: Settings, devices: list[DimseDevice]) -> ssl.SSLContext:
    """The gateway's server certificate; a client certificate required and pinned per device
    (each pinned certificate is self-signed, so trusting it admits exactly that key)."""
    context = server_context(settings)
    context.verify_mode = ssl.CERT_REQUIRED
    for device in devices:
        context.load_verify_locations(cafile=str(device.certificate))
    return context


class FrontDoor:
    def __init__(
        self,
        settings: Settings,
        archive: Archive,
        authorizer: Any,
        auditor: Any,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        assert settings.dimse is not None
        self.settings = settings
        self.dimse = settings.dimse
        self.devices = load_devices(self.dimse.all_devices())
        self.archive, self.authorizer, self.auditor = archive, authorizer, auditor
        self.loop = loop

    # ------------------------------------------------------------------ plumbing

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.dimse.timeout_seconds)

    def _context(self, event: Any, transaction: str, action: Action | None) -> RequestContext:
        requestor = event.assoc.requestor
        return RequestContext(
            request_id=uuid.uuid4().hex,
            method="C-STORE" if action is Action.STORE else "ASSOCIATE",
            path=f"dimse://{self.dimse.ae_title}/{requestor.ae_title.strip()}",
            client_ip=str(requestor.address),
            transaction=transaction,
            action=action,
        )

    def _audit(self, ctx: RequestContext) -> bool:
        try:
            self._run(self.auditor.record(ctx))
            return True
        except Exception as exc:  # an unrecordable answer is withheld (fail closed)
            log.error("audit record failed for %s: %r", ctx.request_id, exc)
            return False

    def device_of(self, event: Any) -> tuple[Device | None, str]:
        """The device this association proves to be, or why it proves nothing."""
        requestor = event.assoc.requestor
        try:
            der = event.assoc.dul.socket.socket.getpeercert(binary_form=True)
        except (AttributeError, ValueError, OSError):
            der = None
        if not der:
            return None, "no client certificate"
        device = self.devices.get(hashlib.sha256(der).hexdigest())
        if device is None:
            return None, "client certificate of no registered device"
        if requestor.ae_title.strip() != device.ae_title:
            return None, f"AE title {requestor.ae_title.strip()!r} is not {device.name}'s"
        if str(requestor.address) != device.host:
            return None, f"{device.name} connected from {requestor.address}, not {device.host}"
        return device, ""

    def _refuse_association(self, event: Any, why: str) -> None:
        ctx = self._context(event, "associate", None)
        ctx.status, ctx.error_code, ctx.error_detail = 401, "unauthorized", why
        self._audit(ctx)
        # Aborting from the association's own thread would wait on itself.
        threading.Thread(target=event.assoc.abort, daemon=True).start()

    # ------------------------------------------------------------------ handlers

    def on_established(self, event: Any) -> None:
        device, why = self.device_of(event)
        if device is None:
            self._refuse_association(event, why)
        else:
            self._seen(device, event, "association")

    def _seen(self, device: Device, event: Any, what: str) -> None:
        """Record in the device inventory (DV-3) that `device` succeeded; bookkeeping only."""
        store = getattr(self.authorizer, "store", None)
        if store is None:
            return
        try:
            sock = event.assoc.dul.socket.socket
            cipher = sock.cipher()
            tls = f"{sock.version()} {cipher[0]}" if cipher else None
        except (AttributeError, ValueError, OSError):
            tls = None
        now = datetime.now(UTC)
        try:
            self._run(
                store.device_seen(device.name, what, str(event.assoc.requestor.address), tls, now)
            )
        except Exception as exc:
            log.warning("device inventory not updated for %s: %r", device.name, exc)

    def on_rejected(self, event: Any) -> None:
        ctx = self._context(event, "associate", None)
        ctx.status, ctx.error_code = 401, "unauthorized"
        ctx.error_detail = "association rejected (AE title not registered or not ours)"
        self._audit(ctx)

    def on_echo(self, event: Any) -> int:
        device, _ = self.device_of(event)
        if device is None:
            return REFUSED_NOT_AUTHORIZED
        self._seen(device, event, "echo")
        return SUCCESS

    def on_store(self, event: Any) -> int:
        device, why = self.device_of(event)
        ctx = self._context(event, "store_instances", Action.STORE)
        if device is None:
            ctx.status, ctx.error_code, ctx.error_detail = 401, "unauthorized", why
            self._audit(ctx)
            return REFUSED_NOT_AUTHORIZED
        ctx.principal = device.principal
        meta = DicomBytesIO()
        write_file_meta_info(meta, event.file_meta, enforce_standard=True)
        data = bytes(128) + b"DICM" + meta.getvalue() + event.request.DataSet.getvalue()
        if len(data) > self.settings.limits.stow_max_bytes:
            ctx.status, ctx.error_code = 413, "payload_too_large"
            ctx.error_detail = f"{len(data)} bytes > {self.settings.limits.stow_max_bytes}"
            self._audit(ctx)
            return OUT_OF_RESOURCES
        try:
            status = self._run(self._store(ctx, data))
        except GatewayError as error:
            ctx.status, ctx.error_code, ctx.error_detail = error.status, error.code, error.detail
            status = REFUSED_NOT_AUTHORIZED if error.status in (401, 403) else PROCESSING_FAILURE
        except Exception as exc:
            log.exception("C-STORE failed")
            ctx.status, ctx.error_code, ctx.error_detail = 500, "internal_error", repr(exc)
            status = PROCESSING_FAILURE
        if not self._audit(ctx):
            return PROCESSING_FAILURE
        if status == SUCCESS:
            self._seen(device, event, "store")
        return status

    async def _store(self, ctx: RequestContext, data: bytes) -> int:
        """One C-STORE as a one-part STOW: the same checks, the same store path."""
        await self.auditor.preflight()
        await self.authorizer.check_action(ctx, Action.STORE)
        part = validate_part({}, data, 1, None, False, ctx.alerts)
        result, denial = await store_parts(self.archive, self.authorizer, ctx, [part])
        if denial is not None:
            raise denial
        if part.failure is not None:
            ctx.status, ctx.error_code, ctx.error_detail = 409, "store_refused", part.reason
            return part.failure
        failed = result.get("00081198")
        if isinstance(failed, dict) and failed.get("Value"):
            ctx.status, ctx.error_code = 409, "store_refused"
            return PROCESSING_FAILURE
        ctx.status = 200
        return SUCCESS

    # ------------------------------------------------------------------ server

    def application_entity(self) -> AE:
        ae = AE(ae_title=self.dimse.ae_title)
        syntaxes = [ts for ts in ALL_TRANSFER_SYNTAXES if ts != ExplicitVRBigEndian]
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification)
        ae.require_calling_aet = sorted({d.ae_title for d in self.devices.values()})
        ae.require_called_aet = True
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.maximum_associations = 16
        return ae

    def handlers(self) -> Any:
        return [
            (evt.EVT_ESTABLISHED, self.on_established),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
        ]


def serve(config_path: str) -> int:
    from .observe import configure_logging

    try:
        settings = load_settings(config_path)
    except SettingsError as exc:
        print(f"dicomweb-gateway dimse: invalid settings\n{exc}", file=sys.stderr)
        return 2
    if settings.dimse is None:
        print("dicomweb-gateway dimse: the settings have no `dimse` section", file=sys.stderr)
        return 2
    configure_logging()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="dimse-services", daemon=True).start()

    async def build() -> tuple[Any, Any, Any]:
        archive = open_archive(settings)
        # The authorizer labels new studies through the archive, but runs no change-feed
        # poller here: the HTTP gateway runs that.
        return archive, Authorizer.from_settings(settings, archive), Auditor.from_settings(settings)

    archive, authorizer, auditor = asyncio.run_coroutine_threadsafe(build(), loop).result(60)
    door = FrontDoor(settings, archive, authorizer, auditor, loop)
    from .devices import sync as sync_inventory

    # The inventory lists exactly the devices this door admits (DV-3).
    asyncio.run_coroutine_threadsafe(
        sync_inventory(authorizer.store, settings, authorizer.policy), loop
    ).result(60)
    context = door_tls_context(settings, settings.dimse.all_devices())
    log.info("DIMSE front door on %s:%s", settings.dimse.host, settings.dimse.port)
    door.application_entity().start_server(
        (settings.dimse.host, settings.dimse.port),
        block=True,
        evt_handlers=door.handlers(),
        ssl_context=context,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomweb-gateway dimse")
    parser.add_argument("--config", required=True)
    return serve(parser.parse_args(argv).config)
