"""The `weasis://` launch URL (Weasis web protocol, `$dicom:rs`: load a study by DICOMweb).

The command is `$dicom:rs --url "<DICOMweb root>" -r "studyUID=<uid>" -H "Authorization: Bearer
<token>"`, URL-encoded as the Weasis documentation does it (spaces as `+`). The token is a
short-lived access token narrowed to that one study (`study:<uid>`), so the URL, wherever it
ends up (browser history, the OS URI handler, Weasis logs), opens that study and nothing else,
for at most the token's lifetime.
"""

from __future__ import annotations

import re
from urllib.parse import quote_plus, unquote_plus

UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def launch_url(dicomweb_url: str, study_instance_uid: str, access_token: str) -> str:
    if not UID.match(study_instance_uid) or len(study_instance_uid) > 64:
        raise ValueError("not a StudyInstanceUID")
    if not re.fullmatch(r"[A-Za-z0-9._~+/=-]+", access_token):
        raise ValueError("not a bearer token")
    if not dicomweb_url.startswith("https://") or '"' in dicomweb_url:
        raise ValueError("the DICOMweb root must be an https URL")
    command = (
        f'$dicom:rs --url "{dicomweb_url}" -r "studyUID={study_instance_uid}"'
        f' -H "Authorization: Bearer {access_token}"'
    )
    return "weasis://" + quote_plus(command, safe="")


def parse(url: str) -> dict[str, str]:
    """The parts of a launch URL (for tests and for anyone checking what a link carries)."""
    if not url.startswith("weasis://"):
        raise ValueError("not a weasis:// URL")
    command = unquote_plus(url[len("weasis://") :])
    m = re.fullmatch(
        r'\$dicom:rs --url "([^"]+)" -r "studyUID=([0-9.]+)" -H "Authorization: Bearer ([^"]+)"',
        command,
    )
    if not m:
        raise ValueError(f"unexpected command: {command[:80]}")
    return {"url": m.group(1), "study": m.group(2), "token": m.group(3)}
