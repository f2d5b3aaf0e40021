"""The policy file as typed data (validated by pydantic; see `loader.py`).

A policy is a list of allow/deny rules plus step-up requirements. Each rule is a block of
criteria that must all match (one criterion per file in `criteria/`); `unless` lists blocks
that exempt a request from the rule. Deny beats allow; no match is deny (`decide.py`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..context import Action

# The authentication context classes of the identity contract, lowest first (docs/internals.md).
DEFAULT_ACR_LEVELS = ("urn:zt:acr:pwd", "urn:zt:acr:mfa", "urn:zt:acr:phr")


class Criteria(BaseModel):
    """Conditions over the caller, the action and the study; every one given must match."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    actions: tuple[Action, ...] | None = None
    scopes: tuple[str, ...] | None = None  # any of these token scopes
    roles: tuple[str, ...] | None = None  # any of these realm roles
    groups: tuple[str, ...] | None = None  # any of these groups (e.g. /site-north)
    clients: tuple[str, ...] | None = None  # any of these OAuth client_ids
    labels_any: tuple[str, ...] | None = None  # the study carries at least one of these
    labels_all: tuple[str, ...] | None = None  # the study carries all of these
    labels_none: tuple[str, ...] | None = None  # the study carries none of these
    unlabelled: bool | None = None  # the study has no label at all
    patient: Literal["own"] | None = None  # the study belongs to the token's `patient` claim
    break_glass: bool | None = None  # the caller holds an active break-glass grant for it
    study_known: bool | None = None  # the study is in the policy store (False: a new study)


class Rule(Criteria):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    effect: Literal["allow", "deny"]
    description: str = ""
    unless: tuple[Criteria, ...] = ()
    # DA-1 (issue 19): an allow rule may grant only a de-identified view (PS3.15 Annex E) with
    # the keyed pseudonyms of `project`; secondary captures are refused unless allowed here.
    view: Literal["identified", "deidentified"] = "identified"
    project: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    allow_secondary_capture: bool = False


class StepUp(Criteria):
    """When its criteria match an allowed request, the login must be this strong and fresh."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    acr: str | None = None
    max_age: int | None = Field(default=None, ge=0, le=86400)


class BreakGlass(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    duration_seconds: int = Field(default=3600, ge=60, le=86400)
    min_reason_length: int = Field(default=10, ge=1, le=1000)


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    labels: tuple[str, ...]  # every label a study may carry; anything else is refused
    acr_levels: tuple[str, ...] = DEFAULT_ACR_LEVELS
    break_glass: BreakGlass = BreakGlass()
    rules: tuple[Rule, ...]
    step_up: tuple[StepUp, ...] = ()

    def acr_rank(self, acr: str | None) -> int:
        """Position of `acr` in `acr_levels`; -1 when absent or unknown (weaker than any)."""
        return self.acr_levels.index(acr) if acr in self.acr_levels else -1
