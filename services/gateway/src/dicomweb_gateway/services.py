"""The services every route uses, typed: one `Services` per application (replaces `app.state`).

The app factory builds it once (`app.create_app`); routes reach it only through
`services_of(request)`, so strict mypy checks every join between the steps. The authorizer and
the auditor are Protocols: the real ones (`authorize.Authorizer`, `audit.Auditor`) and the
unit tests' fakes both fit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request

from .archive import Archive
from .context import Action, Decision, RequestContext
from .policy import StudyFacts
from .search import StudyAnswers
from .settings import Settings
from .store import Claim

if TYPE_CHECKING:
    from .authenticate import Authenticator
    from .policy import Policy
    from .ratelimit import RateLimiter
    from .rewrite import UrlRewriter
    from .store import PolicyStore


class AuthorizerPort(Protocol):
    """The policy enforcement point, as routes use it (authorize.Authorizer)."""

    policy: Policy
    store: PolicyStore
    clock: Callable[[], float]

    async def check_action(self, ctx: RequestContext, action: Action) -> None: ...

    async def check_study(self, ctx: RequestContext, action: Action, uid: str) -> None: ...

    async def decide_study(self, ctx: RequestContext, action: Action, uid: str) -> Decision: ...

    async def decide_studies(
        self, ctx: RequestContext, action: Action, uids: Iterable[str]
    ) -> dict[str, Decision]: ...

    async def permitted_studies(
        self, ctx: RequestContext, action: Action, uids: Iterable[str]
    ) -> set[str]: ...

    async def study_patients(self, uids: Iterable[str]) -> Mapping[str, str | None]: ...

    async def study_facts(self, uids: set[str]) -> dict[str, StudyFacts]: ...

    async def owner(self, level: str, uid: str) -> Claim | None: ...

    async def record_locations(self, claims: Iterable[Claim]) -> None: ...

    async def on_stored(
        self, ctx: RequestContext, uids: Iterable[str], parts: Any = (), claims: Any = ()
    ) -> None: ...

    async def on_deleted(self, study: str, series: str | None) -> None: ...

    def residual_keys(self, matches: Iterable[tuple[str, str]]) -> list[tuple[str, str]]: ...

    async def study_page(
        self,
        ctx: RequestContext,
        action: Action,
        matches: tuple[tuple[str, str], ...],
        fuzzy: bool,
        limit: int,
        offset: int,
    ) -> list[str]: ...

    async def study_page_versions(
        self,
        ctx: RequestContext,
        action: Action,
        matches: tuple[tuple[str, str], ...],
        fuzzy: bool,
        limit: int,
        offset: int,
    ) -> list[tuple[str, str | None]]: ...

    async def count_studies(
        self, ctx: RequestContext, action: Action, matches: tuple[tuple[str, str], ...], fuzzy: bool
    ) -> int | None: ...

    def scan_studies(
        self,
        ctx: RequestContext,
        action: Action,
        matches: tuple[tuple[str, str], ...],
        fuzzy: bool,
        batch: int = 500,
    ) -> AsyncIterator[list[str]]: ...

    def repair(self, study_instance_uids: Iterable[str]) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self) -> bool: ...


class AuditorPort(Protocol):
    """The audit notification, as routes use it (audit.Auditor)."""

    async def preflight(self) -> None: ...

    async def search(self, filters: Any) -> list[dict[str, Any]]: ...

    async def record(self, ctx: RequestContext) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Services:
    """One of each, for the whole worker process."""

    settings: Settings
    archive: Archive
    authenticator: Authenticator
    authorizer: AuthorizerPort
    auditor: AuditorPort
    rate_limiter: RateLimiter
    rewriter: UrlRewriter
    replay: Any  # replay.SqlReplayCache: setup(), ping(), close()
    edge_secret: bytes = b""
    deid: Any = None  # deid.views.DeidService, made on first use (it needs the policy store)
    answers: StudyAnswers = field(default_factory=StudyAnswers)  # the archive's study answers


def services_of(request: Request) -> Services:
    """The application's services (set once by the app factory)."""
    services: Services = request.app.state.services
    return services
