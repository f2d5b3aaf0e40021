"""The data plane's decision endpoint: `GET /_zt/authz`, asked by the edge (nginx) only.

The edge streams bulk reads (frames, rendered, bulk data, metadata, instance/series/study
retrieval) from the archive itself and asks this endpoint first (`auth_request`). The answer
is one of two:

- 204: allowed. The same steps as the gateway's own route run here (parse, authenticate, the
  audit preflight, `decide()` on the study that owns the addressed object), and the allow is
  audited now: one "DICOM Instances Transferred" (110104, R) per user, study and decision
  window. The edge caches the answer per (token, study) for `X-Accel-Expires` seconds: at most
  `edge.decision_ttl_seconds`, never past the token's `exp` (AP-8).
- 403: "not here". A cache key other than the decided study, a refusal, a step-up, a DPoP
  proof, a query string, an unavailable store: nothing is recorded here; the edge then hands
  the whole request to the gateway's own route, which decides again, answers with the exact
  error and audits it. So every refusal is audited exactly once, by the path that answers it.

Only the edge can ask: the gateway listens on a Unix socket only the edge uses, the edge never
forwards a client's request to `/_zt/`, and each subrequest carries the edge's secret.
"""

from __future__ import annotations

import hmac
import time
import uuid

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from .context import Action, RequestContext
from .deid import views as deid_views
from .dicomweb import owning_study
from .errors import GatewayError
from .http import audit_mark
from .parse import METADATA, Transaction, parse_dicomweb
from .services import Services, services_of

# What the edge may stream: reads whose answer the gateway need not rewrite (the archive builds
# public URLs from the `Forwarded` header the edge sends).
STREAMED = frozenset(
    {
        Transaction.RETRIEVE_STUDY,
        Transaction.RETRIEVE_SERIES,
        Transaction.RETRIEVE_INSTANCE,
        Transaction.RETRIEVE_FRAMES,
        Transaction.RETRIEVE_RENDERED_INSTANCE,
        Transaction.RETRIEVE_BULKDATA,
        *METADATA,
    }
)
DECISION_HEADER = "X-Zt-Decision"
_ROOT = "/dicom-web/"


def install(app: FastAPI) -> None:
    services: Services = app.state.services
    edge = services.settings.edge
    assert edge is not None
    # Read once: the secret changes only with a new run directory (and a restart).
    services.edge_secret = edge.secret_file.read_text(encoding="utf-8").strip().encode()
    app.add_route("/_zt/authz", authz, methods=["GET"])


def _not_here() -> Response:
    return Response(status_code=403, headers={"X-Accel-Expires": "0"})


async def authz(request: Request) -> Response:
    state = services_of(request)
    settings = state.settings
    mark = audit_mark(request.scope)
    if mark is not None:
        mark.audited = True  # a decision, not a request of its own: the answer is audited
    edge = settings.edge
    secret = request.headers.get("x-zt-edge-secret", "").encode()
    if edge is None or not hmac.compare_digest(secret, state.edge_secret):
        return Response(status_code=404)
    # nginx keys its cache on the first Authorization header: decide only when there is one.
    if len(request.headers.getlist("authorization")) != 1:
        return _not_here()
    method = request.headers.get("x-zt-original-method", "")
    uri = request.headers.get("x-zt-original-uri", "")
    path, _, query = uri.partition("?")
    if method not in ("GET", "HEAD") or query or "dpop" in request.headers:
        return _not_here()
    if not path.startswith(_ROOT):
        return _not_here()
    client = request.client
    ctx = RequestContext(
        request_id=uuid.uuid4().hex,
        method=method,
        path=path,
        client_ip=client.host if client else "",
    )
    try:
        resource = parse_dicomweb(method, path[len(_ROOT) :], "", settings.limits.qido_max_limit)
        if resource.transaction not in STREAMED:
            return _not_here()
        # The edge files this answer under (token, X-Zt-Key): it must be the study decided on.
        if request.headers.get("x-zt-key", "") != resource.study_instance_uid:
            return _not_here()
        ctx.transaction, ctx.action = resource.transaction.value, Action.READ
        principal = await state.authenticator.authenticate(
            request.headers, method, str(settings.public_url) + path, ""
        )
        if principal.dpop_jkt is not None:
            return _not_here()  # a DPoP-bound token: every request needs its own proof
        ctx.principal = principal
        state.rate_limiter.check("client:" + principal.client_id)
        await state.auditor.preflight()
        await state.authorizer.check_action(ctx, Action.READ)
        await owning_study(request, ctx, resource, Action.READ)
        if deid_views.declines(ctx):
            return _not_here()  # DA-1: a de-identified view is the gateway's, never streamed
    except GatewayError:
        return _not_here()
    ctx.status, ctx.forwarded = 200, True
    ctx.extra["data_plane"] = "edge"
    try:
        await state.auditor.record(ctx)
    except GatewayError:
        return _not_here()  # no unaudited access begins: the gateway answers 503 itself
    lifetime = min(float(edge.decision_ttl_seconds), principal.expires_at - time.time())
    return Response(
        status_code=204,
        headers={"X-Accel-Expires": str(max(0, int(lifetime))), DECISION_HEADER: ctx.request_id},
    )
