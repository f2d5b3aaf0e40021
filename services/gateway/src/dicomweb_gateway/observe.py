"""JSON logs with the request id, and Prometheus metrics (per worker process)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from .context import RequestContext

log = logging.getLogger("dicomweb_gateway")

REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "gateway_requests_total",
    "Requests by PS3.18 transaction and status",
    ["transaction", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "gateway_request_seconds",
    "Time to the response head by transaction",
    ["transaction"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DENIALS = Counter(
    "gateway_denials_total", "Refused requests by error code", ["code"], registry=REGISTRY
)
# The study index is maintained by one worker of one replica at a time (the lease): only that
# process counts rounds, so across a deployment exactly one process's counter grows (AO-3).
INDEX_ROUNDS = Counter(
    "gateway_index_rounds_total",
    "Change-feed rounds this process ran while holding the index lease",
    registry=REGISTRY,
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The access log would duplicate ours without the request id and principal.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every archive request at INFO, and the change-feed poll runs every 2 s per
    # worker: at INFO they would bury the gateway's own one line per request.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def log_request(ctx: RequestContext, seconds: float) -> None:
    transaction = ctx.transaction or "other"
    status = ctx.status or 0
    REQUESTS.labels(transaction, str(status)).inc()
    LATENCY.labels(transaction).observe(seconds)
    if ctx.error_code:
        DENIALS.labels(ctx.error_code).inc()
    principal = ctx.principal
    log.info(
        "request",
        extra={
            "fields": {
                "request_id": ctx.request_id,
                "method": ctx.method,
                "path": ctx.path,
                "transaction": ctx.transaction,
                "status": status,
                "ms": round(seconds * 1000, 1),
                "client_ip": ctx.client_ip,
                "sub": principal.subject if principal else None,
                "client_id": principal.client_id if principal else None,
                "jti": principal.jti if principal else None,
                "error": ctx.error_code,
                "detail": ctx.error_detail,
                "forwarded": ctx.forwarded,
                "studies": [s.study_instance_uid for s in ctx.studies],
                "alerts": ctx.alerts or None,
            }
        },
    )
