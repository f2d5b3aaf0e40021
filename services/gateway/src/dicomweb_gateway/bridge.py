"""The TLS bridge for a legacy modality (DV-2): plain DIMSE in its segment, DICOM TLS onwards.

A modality that cannot speak TLS keeps working without opening plain DICOM to the network:
one bridge per legacy device, listening in the modality's own segment, that
- accepts a TCP connection only from the device's one registered address (any other peer is
  closed before a byte of DICOM is read) and an association only with the device's calling AE
  title and the bridge's called AE title;
- offers Verification and the Storage SOP classes, nothing else (C-FIND, C-MOVE, C-GET, N-*
  are not negotiated, so they are refused);
- forwards each C-ECHO and C-STORE, byte for byte, to the gateway's DIMSE front door over DICOM
  TLS with its own pinned client certificate (the door registers it as device
  `bridge-<name>` with the modality's AE title, so the door's policy, integrity checks and
  per-instance audit apply unchanged), and answers the modality with the door's status;
- writes PS3.15 A.5 audit messages into the gateway's audit store: User Authentication
  (110114, Login/Logout) for each association of the device, DICOM Instances Transferred
  (110104, action C) for each forwarded instance, and a Security Alert (110113, Node
  Authentication) for every refused peer, AE title or forwarding failure, each naming the legacy
  device (or the refused peer), its address and AE title. Fail closed: no association is
  accepted and no instance forwarded while the audit store is not writable.

`dicomweb-gateway bridge --config settings.yaml --device NAME` runs the bridge of the legacy
device NAME (`dimse.legacy` in the settings; the launcher: `ztstack bridge`).
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRBigEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from .audit.messages import (
    DESTINATION,
    INSTANCES_TRANSFERRED,
    NODE_AUTHENTICATION,
    PATIENT_NUMBER,
    SECURITY_ALERT,
    SOURCE,
    STUDY_INSTANCE_UID,
    URI,
    AuditMessage,
    Code,
    Outcome,
    _code,
    _detail,
    _make_safe,
    utc_timestamp,
)
from .audit.store import AuditStore, AuditStoreError, now_utc
from .settings import LegacyDevice, Settings, SettingsError, load_settings

log = logging.getLogger("dicomweb_gateway.bridge")

USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")
LOGIN = Code("110122", "DCM", "Login")
LOGOUT = Code("110123", "DCM", "Logout")
APPLICATION_SERVER_PROCESS = "4"  # AuditSourceTypeCode

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
UPSTREAM_ATTEMPTS = 4


@dataclass
class Peer:
    """What the bridge knows about one side of an association."""

    name: str  # the device's name, or the address when unknown
    ae_title: str
    address: str


@dataclass
class Transfer:
    study: str = ""
    patient: str = ""
    sop_class: str = ""
    sop_instance: str = ""


@dataclass
class Upstream:
    assoc: Any
    instances: int = 0
    failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class BridgeAudit:
    """Builds the bridge's A.5 messages and appends them to the gateway's audit store."""

    def __init__(self, store: AuditStore, source_id: str, device: LegacyDevice, door: str):
        self.store = store
        self.source_id = source_id
        self.device = device
        self.door = door  # dicom://AET@host:port of the front door
        self.listen = f"dicom://{device.bridge_ae_title}@{device.listen_host}:{device.listen_port}"

    def writable(self) -> bool:
        try:
            self.store.check_writable()
        except AuditStoreError as exc:
            log.error("audit store not writable: %s", exc)
            return False
        return True

    def _message(
        self,
        event_id: Code,
        action: str,
        outcome: int,
        peer: Peer,
        *,
        types: Sequence[Code] = (),
        description: str = "",
        transfer: Transfer | None = None,
        alert: str = "",
    ) -> AuditMessage:
        now = now_utc()
        root = ET.Element("AuditMessage")
        event = ET.SubElement(
            root,
            "EventIdentification",
            EventActionCode=action,
            EventDateTime=utc_timestamp(now),
            EventOutcomeIndicator=str(outcome),
        )
        _code(event, "EventID", event_id)
        for code in types:
            _code(event, "EventTypeCode", code)
        if description:
            ET.SubElement(event, "EventOutcomeDescription").text = description
        # The legacy device (or the refused peer): a node, named by AE title and address.
        device = ET.SubElement(
            root,
            "ActiveParticipant",
            UserID=peer.name,
            AlternativeUserID=f"AETITLES={peer.ae_title}" if peer.ae_title else "",
            UserIsRequestor="true",
            NetworkAccessPointID=peer.address,
            NetworkAccessPointTypeCode="2",
        )
        if not peer.ae_title:
            del device.attrib["AlternativeUserID"]
        if event_id == INSTANCES_TRANSFERRED:
            _code(device, "RoleIDCode", SOURCE)
        bridge = ET.SubElement(
            root,
            "ActiveParticipant",
            UserID=self.device.device_name,
            AlternativeUserID=f"AETITLES={self.device.bridge_ae_title}",
            UserIsRequestor="false",
            NetworkAccessPointID=self.device.listen_host,
            NetworkAccessPointTypeCode="2",
        )
        del bridge  # the bridge relays; it holds no role in the transfer itself
        if event_id == INSTANCES_TRANSFERRED:
            door = ET.SubElement(
                root, "ActiveParticipant", UserID=self.door, UserIsRequestor="false"
            )
            _code(door, "RoleIDCode", DESTINATION)
        source = ET.SubElement(root, "AuditSourceIdentification", AuditSourceID=self.source_id)
        ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": APPLICATION_SERVER_PROCESS})
        studies: tuple[str, ...] = ()
        patients: tuple[str, ...] = ()
        if transfer is not None and transfer.study:
            obj = ET.SubElement(
                root,
                "ParticipantObjectIdentification",
                ParticipantObjectID=transfer.study,
                ParticipantObjectTypeCode="2",
                ParticipantObjectTypeCodeRole="3",
            )
            _code(obj, "ParticipantObjectIDTypeCode", STUDY_INSTANCE_UID)
            desc = ET.SubElement(obj, "ParticipantObjectDescription")
            ET.SubElement(desc, "SOPClass", UID=transfer.sop_class, NumberOfInstances="1")
            studies = (transfer.study,)
            if transfer.patient:
                pat = ET.SubElement(
                    root,
                    "ParticipantObjectIdentification",
                    ParticipantObjectID=transfer.patient,
                    ParticipantObjectTypeCode="1",
                    ParticipantObjectTypeCodeRole="1",
                )
                _code(pat, "ParticipantObjectIDTypeCode", PATIENT_NUMBER)
                patients = (transfer.patient,)
        if alert or event_id == USER_AUTHENTICATION:
            obj = ET.SubElement(
                root,
                "ParticipantObjectIdentification",
                ParticipantObjectID=self.listen,
                ParticipantObjectTypeCode="2",
                ParticipantObjectTypeCodeRole="13",
            )
            _code(obj, "ParticipantObjectIDTypeCode", URI)
            ET.SubElement(obj, "ParticipantObjectName").text = "DICOM TLS bridge"
            if alert:
                _detail(obj, "Alert Description", alert)
        _make_safe(root)
        ET.indent(root)
        return AuditMessage(
            event_id=event_id,
            action=action,
            outcome=outcome,
            time=now,
            xml=ET.tostring(root, encoding="unicode"),
            user=peer.name,
            patients=patients,
            studies=studies,
            event_types=tuple(t.code for t in types),
        )

    def _append(self, message: AuditMessage) -> bool:
        try:
            self.store.append([message], f"bridge-{uuid.uuid4().hex}")
        except AuditStoreError as exc:
            log.error("audit record lost: %s", exc)
            return False
        return True

    def login(self, peer: Peer) -> bool:
        return self._append(
            self._message(USER_AUTHENTICATION, "E", Outcome.SUCCESS, peer, types=[LOGIN])
        )

    def logout(self, peer: Peer, instances: int, failures: int, how: str) -> bool:
        text = f"association {how}: {instances} instance(s) forwarded, {failures} failed"
        return self._append(
            self._message(
                USER_AUTHENTICATION, "E", Outcome.SUCCESS, peer, types=[LOGOUT], description=text
            )
        )

    def transfer(self, peer: Peer, transfer: Transfer, status: int, why: str = "") -> bool:
        outcome = Outcome.SUCCESS if status == SUCCESS else Outcome.MINOR_FAILURE
        text = (
            "" if status == SUCCESS else f"door status 0x{status:04X}" + (f": {why}" if why else "")
        )
        return self._append(
            self._message(
                INSTANCES_TRANSFERRED, "C", outcome, peer, description=text, transfer=transfer
            )
        )

    def refused(self, peer: Peer, why: str, outcome: int = Outcome.MINOR_FAILURE) -> bool:
        return self._append(
            self._message(
                SECURITY_ALERT,
                "E",
                outcome,
                peer,
                types=[NODE_AUTHENTICATION],
                description=why,
                alert=f"authentication: {why}",
            )
        )


class Bridge:
    def __init__(self, settings: Settings, device: LegacyDevice, audit: BridgeAudit) -> None:
        assert settings.dimse is not None
        self.settings = settings
        self.dimse = settings.dimse
        self.device = device
        self.audit = audit
        self.door_host = device.door_host or self.dimse.host
        self.upstreams: dict[int, Upstream] = {}
        self.sessions: set[int] = set()  # associations of the device that were established
        self._lock = threading.Lock()
        self._spool = tempfile.TemporaryDirectory(prefix=f"zt-bridge-{device.name}-")
        os.chmod(self._spool.name, 0o700)

    # ------------------------------------------------------------------ the device's side

    def peer(self, event: Any) -> Peer:
        requestor = event.assoc.requestor
        return Peer(self.device.name, requestor.ae_title.strip(), str(requestor.address))

    def admit_connection(self, address: str) -> bool:
        """Only the device's one registered address gets further than the TCP accept."""
        if address == self.device.host:
            return True
        why = (
            f"connection from {address} refused: {self.device.name} is registered at "
            f"{self.device.host} only"
        )
        log.warning(why)
        self.audit.refused(Peer(address, "", address), why)
        return False

    def on_requested(self, event: Any) -> None:
        # The audit store must be writable before anything is accepted (fail closed).
        if not self.audit.writable():
            threading.Thread(target=event.assoc.abort, daemon=True).start()

    def on_rejected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        calling = requestor.ae_title.strip()
        called = event.assoc.acceptor.ae_title.strip()
        why = (
            f"association from {requestor.address} rejected: calling AE {calling!r}, called "
            f"AE {called!r}; only {self.device.ae_title!r} -> "
            f"{self.device.bridge_ae_title!r} is registered"
        )
        self.audit.refused(Peer(str(requestor.address), calling, str(requestor.address)), why)

    def on_established(self, event: Any) -> None:
        peer = self.peer(event)
        if not event.assoc.accepted_contexts:
            # Only Verification and Storage are offered: C-FIND, C-MOVE, C-GET, N-* are not.
            asked = sorted({str(cx.abstract_syntax) for cx in event.assoc.rejected_contexts})
            self.audit.refused(
                peer,
                f"no service offered to {peer.ae_title}: asked for "
                f"{', '.join(asked[:8]) or 'nothing'}",
            )
            threading.Thread(target=event.assoc.abort, daemon=True).start()
            return
        with self._lock:
            self.sessions.add(id(event.assoc))
        if not self.audit.login(peer):
            threading.Thread(target=event.assoc.abort, daemon=True).start()

    def on_closed(self, event: Any, how: str) -> None:
        upstream = self._pop(event)
        instances = failures = 0
        if upstream is not None:
            instances, failures = upstream.instances, upstream.failures
            try:
                if upstream.assoc.is_established:
                    upstream.assoc.release()
            except Exception:  # the door may already be gone
                log.exception("releasing the upstream association failed")
        with self._lock:
            established = id(event.assoc) in self.sessions
            self.sessions.discard(id(event.assoc))
        if established:
            self.audit.logout(self.peer(event), instances, failures, how)

    def on_echo(self, event: Any) -> int:
        upstream = self._upstream(event)
        if upstream is None:
            return PROCESSING_FAILURE
        with upstream.lock:
            status = upstream.assoc.send_c_echo()
        return int(getattr(status, "Status", PROCESSING_FAILURE))

    def on_store(self, event: Any) -> int:
        peer = self.peer(event)
        meta = DicomBytesIO()
        write_file_meta_info(meta, event.file_meta, enforce_standard=True)
        data = bytes(128) + b"DICM" + meta.getvalue() + event.request.DataSet.getvalue()
        transfer = self._describe(data, event)
        if not self.audit.writable():
            return PROCESSING_FAILURE
        upstream = self._upstream(event)
        if upstream is None:
            self.audit.transfer(peer, transfer, PROCESSING_FAILURE, "the front door is unreachable")
            return PROCESSING_FAILURE
        fd, name = tempfile.mkstemp(suffix=".dcm", dir=self._spool.name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            with upstream.lock:
                answer = upstream.assoc.send_c_store(Path(name))
        finally:
            Path(name).unlink(missing_ok=True)
        status = int(getattr(answer, "Status", PROCESSING_FAILURE))
        if status == SUCCESS:
            upstream.instances += 1
        else:
            upstream.failures += 1
        if not self.audit.transfer(peer, transfer, status):
            return PROCESSING_FAILURE  # an unrecordable transfer is not reported as a success
        return status

    @staticmethod
    def _describe(data: bytes, event: Any) -> Transfer:
        try:
            ds = dcmread(
                DicomBytesIO(data),
                stop_before_pixels=True,
                specific_tags=["StudyInstanceUID", "PatientID"],
            )
            study, patient = str(ds.get("StudyInstanceUID", "")), str(ds.get("PatientID", ""))
        except Exception:  # the door judges the instance; the record says what we could read
            study = patient = ""
        return Transfer(
            study,
            patient,
            str(event.file_meta.MediaStorageSOPClassUID),
            str(event.file_meta.MediaStorageSOPInstanceUID),
        )

    # ------------------------------------------------------------------ the door's side

    def _pop(self, event: Any) -> Upstream | None:
        with self._lock:
            return self.upstreams.pop(id(event.assoc), None)

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.device.ca_cert))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.device.certificate), str(self.device.key))
        return context

    def _upstream(self, event: Any) -> Upstream | None:
        """The association to the door for this association of the device: the same
        presentation contexts (abstract syntax and the transfer syntax accepted)."""
        key = id(event.assoc)
        with self._lock:
            existing = self.upstreams.get(key)
        if existing is not None and existing.assoc.is_established:
            return existing
        contexts = [
            build_context(cx.abstract_syntax, [cx.transfer_syntax[0]])
            for cx in event.assoc.accepted_contexts
        ]
        ae = AE(ae_title=self.device.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.dimse.timeout_seconds
        assoc = None
        for attempt in range(UPSTREAM_ATTEMPTS):  # the door may be restarting (new devices)
            try:
                assoc = ae.associate(
                    self.door_host,
                    self.dimse.port,
                    contexts=contexts,
                    ae_title=self.dimse.ae_title,
                    tls_args=(self.tls_context(), self.door_host),
                    bind_address=(self.device.source_host, 0),
                )
            except (ssl.SSLError, OSError) as exc:
                log.error("the front door refused the bridge: %r", exc)
                self.audit.refused(
                    self.peer(event), f"forwarding failed: {exc!r}", Outcome.SERIOUS_FAILURE
                )
                return None
            if assoc.is_established or assoc.is_rejected:
                break
            time.sleep(0.5 * (attempt + 1))  # not connected (refused, reset): try again
        if assoc is None or not assoc.is_established:
            self.audit.refused(
                self.peer(event),
                "the front door did not accept the bridge",
                Outcome.SERIOUS_FAILURE,
            )
            return None
        upstream = Upstream(assoc)
        with self._lock:
            self.upstreams[key] = upstream
        return upstream

    # ------------------------------------------------------------------ server

    def application_entity(self) -> AE:
        ae = AE(ae_title=self.device.bridge_ae_title)
        syntaxes = [ts for ts in ALL_TRANSFER_SYNTAXES if ts != ExplicitVRBigEndian]
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification)
        ae.require_calling_aet = [self.device.ae_title.strip()]
        ae.require_called_aet = True
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.maximum_associations = 4
        return ae

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_ESTABLISHED, self.on_established),
            (evt.EVT_RELEASED, lambda e: self.on_closed(e, "released")),
            (evt.EVT_ABORTED, lambda e: self.on_closed(e, "aborted")),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
        ]

    def make_server(self) -> ThreadedAssociationServer:
        bridge = self

        class Server(ThreadedAssociationServer):
            def verify_request(self, request: Any, client_address: Any) -> bool:
                address = client_address[0] if isinstance(client_address, tuple) else ""
                return bridge.admit_connection(str(address))

        ae = self.application_entity()
        server = ae.make_server(
            (self.device.listen_host, self.device.listen_port),
            evt_handlers=self.handlers(),
            server_class=Server,
        )
        return server

    def close(self) -> None:
        self._spool.cleanup()


def build(settings: Settings, name: str) -> Bridge:
    assert settings.dimse is not None
    device = settings.dimse.legacy_device(name)
    if device is None:
        raise SettingsError("settings", [f"dimse.legacy: no legacy device named {name!r}"])
    door = (
        f"dicom://{settings.dimse.ae_title}@{device.door_host or settings.dimse.host}:"
        f"{settings.dimse.port}"
    )
    audit = BridgeAudit(
        AuditStore(settings.audit.database_url), settings.audit.source_id, device, door
    )
    return Bridge(settings, device, audit)


def serve(config_path: str, name: str) -> int:
    from .observe import configure_logging

    try:
        settings = load_settings(config_path)
        if settings.dimse is None:
            raise SettingsError(config_path, ["the settings have no `dimse` section"])
        bridge = build(settings, name)
    except SettingsError as exc:
        print(f"dicomweb-gateway bridge: {exc}", file=sys.stderr)
        return 2
    configure_logging()
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    try:
        server = bridge.make_server()
    except OSError as exc:
        print(
            f"dicomweb-gateway bridge: cannot listen on {bridge.device.listen_host}:"
            f"{bridge.device.listen_port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    log.info(
        "TLS bridge %s on %s:%s for %s at %s",
        bridge.device.device_name,
        bridge.device.listen_host,
        bridge.device.listen_port,
        bridge.device.ae_title,
        bridge.device.host,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        bridge.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomweb-gateway bridge")
    parser.add_argument("--config", required=True, help="gateway settings YAML file")
    parser.add_argument("--device", required=True, help="the legacy device's name (dimse.legacy)")
    args = parser.parse_args(argv)
    return serve(args.config, args.device)


__all__ = ["Bridge", "BridgeAudit", "main"]
