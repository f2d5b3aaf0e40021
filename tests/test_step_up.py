"""ID-4 end to end: step-up freshness (RFC 9470 `max_age`) with the clock really running.

The demo policy wants a login at most 300 s old for delete, break-glass and label changes.
Waiting 300 s is too long for a test, so this test starts one more gateway whose policy is
`config/policy.yaml` with only that `max_age` shortened to a few seconds, logs in with MFA,
lets the login age past `max_age`, and checks the gateway challenges instead of acting (and
the archive saw nothing); a fresh MFA login is then accepted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from ztstack import demo_data

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
MFA = "urn:zt:acr:mfa"
RS, D = "user/ImagingStudy.rs", "user/ImagingStudy.d"
MAX_AGE = 4  # seconds; short enough to wait out, long enough for one fresh request
STUDIES = {s.key: s for s in demo_data.STUDIES}
GRANTED = STUDIES["p004-ct-head"].study_instance_uid
DELETED = STUDIES["p001-mr-brain"].study_instance_uid
REASON = "unconscious patient, ER (step-up freshness test)"


def short_max_age_policy(directory: Path) -> Path:
    """config/policy.yaml with the destructive-actions step-up rule's max_age set to MAX_AGE."""
    policy = yaml.safe_load((REPO / "config" / "policy.yaml").read_text(encoding="utf-8"))
    rules = [r for r in policy["step_up"] if {"delete", "break_glass"} <= set(r["actions"])]
    assert len(rules) == 1 and rules[0]["max_age"] > MAX_AGE, rules
    rules[0]["max_age"] = MAX_AGE
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
    return path


def wait_until_stale(token_set: Any) -> None:
    auth_time = token_set.claims["auth_time"]
    assert time.time() - auth_time <= MAX_AGE, "the login was already stale when issued"
    time.sleep(max(0.0, auth_time + MAX_AGE + 1.5 - time.time()))


def challenged_for_freshness(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    challenge = response.headers["WWW-Authenticate"]
    assert 'error="insufficient_user_authentication"' in challenge
    assert f'max_age="{MAX_AGE}"' in challenge
    assert f'acr_values="{MFA}' in challenge


def request(
    https: httpx.Client, method: str, url: str, token_set: Any, body: Any = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token_set.access_token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    content = json.dumps(body).encode() if body is not None else None
    return https.request(method, url, headers=headers, content=content)


@pytest.mark.control("ID-4")
@pytest.mark.timeout(120)
def test_a_stale_mfa_login_is_challenged_and_a_fresh_one_accepted(
    stack: dict[str, Any],
    https: httpx.Client,
    tokens: Any,
    archive_log: Any,
    extra_gateway: Any,
    tmp_path: Path,
) -> None:
    overrides = {
        "policy": {"file": str(short_max_age_policy(tmp_path))},
        # Own policy store: the grant this test obtains never reaches the main gateway.
        "database_url": f"sqlite:///{tmp_path / 'gateway.db'}",
    }
    with extra_gateway(overrides) as gw:
        break_glass = f"{gw.url}/admin/break-glass"
        body = {"study_instance_uid": GRANTED, "reason": REASON}

        er = tokens.user("er-physician", f"openid {RS}", acr_values=MFA, max_age=MAX_AGE)
        radiologist = tokens.user("radiologist", f"openid {RS} {D}", acr_values=MFA, max_age=60)
        assert er.claims.get("acr") in (MFA, "urn:zt:acr:phr")
        wait_until_stale(er)
        mark = archive_log.mark()
        challenged_for_freshness(request(https, "POST", break_glass, er, body))
        if time.time() - radiologist.claims["auth_time"] <= MAX_AGE:
            wait_until_stale(radiologist)
        challenged_for_freshness(
            request(https, "DELETE", f"{gw.url}/dicom-web/studies/{DELETED}", radiologist)
        )
        saw = [f"{e.method} {e.uri}" for e in archive_log.since(mark)]
        assert not saw, saw

        fresh = tokens.user("er-physician", f"openid {RS}", acr_values=MFA, max_age=MAX_AGE)
        assert fresh.claims["auth_time"] > er.claims["auth_time"]
        granted = request(https, "POST", break_glass, fresh, body)
        assert granted.status_code == 201, granted.text
        assert granted.json()["study_instance_uid"] == GRANTED
