"""DICOM JSON (PS3.18 Annex F) to the Native DICOM Model XML (PS3.19 A.1), for clients that ask
for `application/dicom+xml` (QIDO-RS results, STOW-RS responses; issue 14 finding 5).

A small writer instead of pydicom: pydicom reads and writes DICOM JSON but has no PS3.19 XML
writer, and going through a pydicom Dataset would re-encode values (numbers, person names,
empty values) the archive already answered in DICOM JSON. The two models are mappings of one
another (PS3.18 F.2 was written from PS3.19 A.1), so the translation is element by element:

- `DicomAttribute` with `tag`, `vr` and `keyword` (from pydicom's data dictionary; omitted for
  private or unknown tags, as PS3.19 allows);
- values as `<Value number="n">`, numbers in their JSON text form;
- PN as `<PersonName number="n">` with `Alphabetic`/`Ideographic`/`Phonetic` groups split into
  `FamilyName`, `GivenName`, `MiddleName`, `NamePrefix`, `NameSuffix` at `^`;
- SQ items as `<Item number="n">`, recursively; `BulkDataURI` as `<BulkData uri=...>`;
  `InlineBinary` as `<InlineBinary>`.

Text is escaped by ElementTree; characters XML 1.0 cannot carry (C0 controls other than tab, LF,
CR) never reach here: the archive's values are text of the VR's repertoire.
"""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from typing import Any

from pydicom.datadict import keyword_for_tag

NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
DICOM_XML = "application/dicom+xml"
_PN_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _keyword(tag: str) -> str:
    try:
        return str(keyword_for_tag(int(tag, 16)) or "")
    except ValueError:
        return ""


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return json.dumps(value)
    return str(value)


def _attributes(parent: ET.Element, dataset: dict[str, Any]) -> None:
    for tag in sorted(dataset):
        element = dataset[tag]
        if not isinstance(element, dict):
            continue
        vr = str(element.get("vr", "UN"))
        attrs = {"tag": tag.upper(), "vr": vr}
        keyword = _keyword(tag)
        if keyword:
            attrs["keyword"] = keyword
        node = ET.SubElement(parent, "DicomAttribute", attrs)
        if "BulkDataURI" in element:
            ET.SubElement(node, "BulkData", {"uri": str(element["BulkDataURI"])})
            continue
        if "InlineBinary" in element:
            ET.SubElement(node, "InlineBinary").text = str(element["InlineBinary"])
            continue
        for number, value in enumerate(element.get("Value") or [], start=1):
            if vr == "SQ":
                item = ET.SubElement(node, "Item", {"number": str(number)})
                if isinstance(value, dict):
                    _attributes(item, value)
            elif vr == "PN":
                person = ET.SubElement(node, "PersonName", {"number": str(number)})
                groups = value if isinstance(value, dict) else {"Alphabetic": str(value)}
                for group in _PN_GROUPS:
                    name = groups.get(group)
                    if not isinstance(name, str):
                        continue
                    group_node = ET.SubElement(person, group)
                    for component, part in zip(_PN_COMPONENTS, name.split("^"), strict=False):
                        if part:
                            ET.SubElement(group_node, component).text = part
            elif value is None:
                ET.SubElement(node, "Value", {"number": str(number)})
            else:
                ET.SubElement(node, "Value", {"number": str(number)}).text = _text(value)


def native_xml(dataset: dict[str, Any]) -> bytes:
    """One data set (a DICOM JSON object) as a PS3.19 NativeDicomModel document (UTF-8)."""
    root = ET.Element("NativeDicomModel", {"xmlns": NAMESPACE})
    _attributes(root, dataset)
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body


def multipart_xml(datasets: list[dict[str, Any]]) -> tuple[bytes, str]:
    """(body, Content-Type) of `multipart/related; type="application/dicom+xml"`: one part per
    data set (PS3.18 8.7.3.x); no data set gives a body with the closing delimiter only."""
    boundary = uuid.uuid4().hex
    chunks = []
    for dataset in datasets:
        chunks.append(f"--{boundary}\r\nContent-Type: {DICOM_XML}\r\n\r\n".encode())
        chunks.append(native_xml(dataset))
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    content_type = f'multipart/related; type="{DICOM_XML}"; boundary={boundary}'
    return b"".join(chunks), content_type


def parse_native_xml(body: bytes) -> dict[str, Any]:
    """The inverse, for tests and the differential suite: a NativeDicomModel document as DICOM
    JSON (values as text, which is how both sides are compared)."""
    root = ET.fromstring(body)  # noqa: S314 - tests only, our own or the archive's answers
    return _parse(root)


def _parse(node: ET.Element) -> dict[str, Any]:
    ns = "{" + NAMESPACE + "}"
    out: dict[str, Any] = {}
    for attribute in node.findall(ns + "DicomAttribute"):
        tag = attribute.get("tag", "").upper()
        vr = attribute.get("vr", "UN")
        element: dict[str, Any] = {"vr": vr}
        values: list[Any] = []
        for child in attribute:
            name = child.tag.removeprefix(ns)
            if name == "Item":
                values.append(_parse(child))
            elif name == "PersonName":
                groups: dict[str, str] = {}
                for group in child:
                    parts = [group.findtext(ns + c) or "" for c in _PN_COMPONENTS]
                    groups[group.tag.removeprefix(ns)] = "^".join(parts).rstrip("^")
                values.append(groups)
            elif name == "Value":
                values.append(child.text or "")
            elif name == "BulkData":
                element["BulkDataURI"] = child.get("uri")
            elif name == "InlineBinary":
                element["InlineBinary"] = child.text or ""
        if values:
            element["Value"] = values
        out[tag] = element
    return out


def rewrite_multipart(body: bytes, content_type: str, rewrite: Any) -> tuple[bytes, str]:
    """Rewrite each part of a multipart body (URLs: `rewrite(bytes) -> bytes`) and rebuild it,
    so that no part keeps a Content-Length its new length contradicts."""
    boundary = ""
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        return rewrite(body), content_type
    delimiter = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, payload = chunk.partition(b"\r\n\r\n")
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        media = DICOM_XML
        for line in head.split(b"\r\n"):
            field, _, raw = line.partition(b":")
            if field.strip().lower() == b"content-type":
                media = raw.strip().decode("ascii", "replace")
        parts.append((media, rewrite(payload)))
    out = b"".join(
        f"--{boundary}\r\nContent-Type: {media}\r\n\r\n".encode() + payload + b"\r\n"
        for media, payload in parts
    )
    return out + f"--{boundary}--\r\n".encode(), content_type
