"""The operation scopes this resource server understands (SMART App Launch v2, ARCHITECTURE
section 5): the one list, read by the policy (which scope grants which action), the RFC 9728
metadata (`scopes_supported`).
"""

from __future__ import annotations

from ..context import Action

READ_SCOPES = ("user/ImagingStudy.rs", "patient/ImagingStudy.rs", "system/ImagingStudy.rs")
STORE_SCOPES = ("user/ImagingStudy.c", "system/ImagingStudy.c")
DELETE_SCOPES = ("user/ImagingStudy.d",)

# Every operation scope, in the order RFC 9728 metadata lists them.
OPERATION_SCOPES = (
    "user/ImagingStudy.rs",
    "user/ImagingStudy.c",
    "user/ImagingStudy.d",
    "patient/ImagingStudy.rs",
    "system/ImagingStudy.c",
    "system/ImagingStudy.rs",
)

# Which scope grants which DICOMweb action; the prefix is the SMART context level.
GRANTING_SCOPES: dict[Action, frozenset[str]] = {
    Action.SEARCH: frozenset(READ_SCOPES),
    Action.READ: frozenset(READ_SCOPES),
    Action.STORE: frozenset(STORE_SCOPES),
    Action.DELETE: frozenset(DELETE_SCOPES),
}

STUDY_SCOPE_PREFIX = "study:"  # `study:<StudyInstanceUID>` narrows a token to named studies
