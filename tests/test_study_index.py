"""The study index end to end (issue 12; AP-1): searches at every level, paged through to the
end, return exactly what each demo caller may see, with no duplicates, no gaps, right counts.

A few hundred synthetic studies across sites, a research protocol, the VIP patient and the
portal patient are loaded straight into the archive (as a modality or a migration would), so
the gateway learns of them only through the archive's change feed: the test also measures that
they become searchable within the stated bound (docs/policy.md, "Study index").
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from ztstack.dicom_objects import instance, part10

from tests.conftest import ca_context
from tests.test_authorization import CALLERS, STUDIES, Caller, bearer, send, token_for

pytestmark = pytest.mark.e2e

N_STUDIES = 240
# Directly stored studies are searchable within the change-feed interval (2 s) plus the time
# to index them; the bound the docs state for a burst of this size.
VISIBLE_WITHIN_SECONDS = 60
PAGE = 37  # an odd page size: pages never line up with anything by accident

SITES = {"north": "North General Hospital", "south": "South Valley Clinic", "none": "Elsewhere"}


def synthetic(n: int) -> tuple[pydicom.Dataset, dict[str, Any]]:
    """Study n: its site, research protocol and patient cycle through the demo policy's cases."""
    site = ("north", "south", "none")[n % 3]
    trial = n % 5 == 0
    patient = "ZT-P004" if n % 11 == 0 else "ZT-P001" if n % 7 == 0 else f"ZT-IDX-{n:04d}"
    ds = instance(patient_id=patient, modality=("CT", "MR", "OT")[n % 3], rows=8)
    ds.PatientName = f"Index^Patient{n:04d}"
    ds.InstitutionName = SITES[site]
    if trial:
        ds.ClinicalTrialProtocolID = "TRIAL-42"
    ds.StudyDate = f"2024{1 + n % 12:02d}{1 + n % 28:02d}"
    ds.StudyTime = f"{n % 24:02d}{n % 60:02d}00"
    ds.AccessionNumber = f"IDX{n:05d}"
    ds.StudyDescription = f"index study {n}"
    facts = {"n": n, "site": site, "trial": trial, "patient": patient, "date": ds.StudyDate}
    return ds, facts


def may_see(caller: str, facts: dict[str, Any]) -> bool:
    """The demo policy (config/policy.yaml) for these studies, written out by hand."""
    if facts["patient"] == "ZT-P004":  # vip: nobody here has vip-access or a grant
        return False
    site, trial = facts["site"], facts["trial"]
    return {
        "north-clinician": site == "north",
        "south-clinician": site == "south",
        "radiologist": site in ("north", "south"),
        "researcher": trial,
        "ai-node": trial,
        "portal-patient": facts["patient"] == "ZT-P001",
    }.get(caller, False)


@pytest.fixture(scope="module")
def loaded(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Store the synthetic studies straight into the archive (4 at a time)."""
    archive = stack["archive"]
    password = Path(archive["password_file"]).read_text(encoding="utf-8").strip()
    studies: dict[str, dict[str, Any]] = {}
    files = []
    for n in range(N_STUDIES):
        ds, facts = synthetic(n)
        files.append(part10(ds))
        studies[ds.StudyInstanceUID] = facts | {"series": ds.SeriesInstanceUID}
    context = ca_context(stack, (archive["gateway_client_cert"], archive["gateway_client_key"]))
    with httpx.Client(
        base_url=archive["http_url"], verify=context, auth=(archive["username"], password)
    ) as client:

        def post(data: bytes) -> int:
            return client.post("/instances", content=data).status_code

        with ThreadPoolExecutor(4) as pool:
            assert set(pool.map(post, files)) == {200}
    return studies


def expected(caller: Caller, loaded: dict[str, dict[str, Any]]) -> set[str]:
    demo = {STUDIES[k].study_instance_uid for k in caller.visible}
    return demo | {uid for uid, facts in loaded.items() if may_see(caller.name, facts)}


def known(loaded: dict[str, dict[str, Any]]) -> set[str]:
    """The studies whose permission this test knows: every demo study and every one it loaded.
    Other tests of the session store studies of their own (permitted by the same policy); the
    comparisons are exact over this universe."""
    return {s.study_instance_uid for s in STUDIES.values()} | set(loaded)


def page_through(
    https: httpx.Client, url: str, headers: dict[str, str], level_key: str = "0020000D"
) -> list[list[dict[str, Any]]]:
    pages = []
    offset = 0
    while True:
        sep = "&" if "?" in url else "?"
        r = send(https, "GET", f"{url}{sep}limit={PAGE}&offset={offset}", headers)
        assert r.status_code == 200, r.text
        page = r.json()
        pages.append(page)
        if len(page) < PAGE:
            return pages
        offset += PAGE


def uids(items: list[dict[str, Any]], tag: str = "0020000D") -> list[str]:
    return [item[tag]["Value"][0] for item in items]


@pytest.mark.control("AP-1")
def test_directly_stored_studies_become_searchable_within_the_bound(
    stack: dict[str, Any], https: httpx.Client, tokens: Any, loaded: dict[str, dict[str, Any]]
) -> None:
    caller = CALLERS["radiologist"]
    headers = bearer(token_for(tokens, stack, caller)) | {"Accept": "application/dicom+json"}
    want = expected(caller, loaded)
    started = time.monotonic()
    while True:
        r = send(https, "GET", f"{stack['dicomweb_url']}/studies?limit=1000", headers)
        assert r.status_code == 200, r.text
        seen = set(uids(r.json())) & known(loaded)
        assert seen <= want  # never more than permitted, even while indexing
        if seen == want:
            break
        assert time.monotonic() - started < VISIBLE_WITHIN_SECONDS, (
            f"{len(want - seen)} of {len(want)} studies still not searchable"
        )
        time.sleep(1)
    print(
        f"{len(loaded)} directly stored studies searchable after {time.monotonic() - started:.1f} s"
    )


@pytest.mark.control("AP-1")
@pytest.mark.parametrize("caller_name", list(CALLERS))
def test_paging_returns_exactly_the_permitted_set(
    stack: dict[str, Any],
    https: httpx.Client,
    tokens: Any,
    loaded: dict[str, dict[str, Any]],
    caller_name: str,
) -> None:
    caller = CALLERS[caller_name]
    headers = bearer(token_for(tokens, stack, caller)) | {"Accept": "application/dicom+json"}
    want = expected(caller, loaded)
    root = stack["dicomweb_url"]
    if not want:  # no image access at all: refused outright, or an empty answer
        for level in ("studies", "series", "instances"):
            r = send(https, "GET", f"{root}/{level}?limit={PAGE}", headers)
            assert r.status_code == 403 or (r.status_code == 200 and r.json() == []), r.text
        return
    # Wait for the feed (the test above states the bound; here only correctness counts).
    deadline = time.monotonic() + VISIBLE_WITHIN_SECONDS
    while True:
        pages = page_through(https, f"{root}/studies", headers)
        got = [uid for page in pages for uid in uids(page)]
        mine = set(got) & known(loaded)
        if mine == want or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(got) == len(set(got)), "a study came back twice"
    assert mine == want, (sorted(mine - want)[:5], sorted(want - mine)[:5])
    # Every page but the last is full: no gaps.
    assert all(len(p) == PAGE for p in pages[:-1])
    assert len(pages[-1]) == len(got) % PAGE or (len(pages[-1]) == 0 and len(got) % PAGE == 0)
    # The same order every time (stable paging), newest StudyDate first.
    again = [uid for page in page_through(https, f"{root}/studies", headers) for uid in uids(page)]
    assert again == got
    synthetic_order = [loaded[u]["date"] for u in got if u in loaded]
    assert synthetic_order == sorted(synthetic_order, reverse=True)
    # Series across studies: one series per synthetic study, the demo studies' own series.
    series_pages = page_through(https, f"{root}/series", headers)
    series = [item for page in series_pages for item in page]
    assert len(uids(series, "0020000E")) == len(set(uids(series, "0020000E")))
    assert set(uids(series)) & known(loaded) == want
    assert all(len(p) == PAGE for p in series_pages[:-1])


@pytest.mark.control("AP-1")
def test_matching_keys_over_the_index(
    stack: dict[str, Any], https: httpx.Client, tokens: Any, loaded: dict[str, dict[str, Any]]
) -> None:
    caller = CALLERS["radiologist"]
    headers = bearer(token_for(tokens, stack, caller)) | {"Accept": "application/dicom+json"}
    root = stack["dicomweb_url"]
    mine = {u: f for u, f in loaded.items() if may_see("radiologist", f)}
    # Date range.
    r = send(https, "GET", f"{root}/studies?StudyDate=20240301-20240531&limit=1000", headers)
    want = {u for u, f in mine.items() if "20240301" <= f["date"] <= "20240531"}
    assert set(uids(r.json())) & set(loaded) == want
    # PatientID exact; wildcard on PatientID; a VIP patient's studies stay hidden.
    r = send(https, "GET", f"{root}/studies?PatientID=ZT-IDX-0001&limit=1000", headers)
    assert set(uids(r.json())) == {u for u, f in mine.items() if f["patient"] == "ZT-IDX-0001"}
    r = send(https, "GET", f"{root}/studies?PatientID=ZT-IDX-00*&limit=1000", headers)
    assert set(uids(r.json())) == {
        u for u, f in mine.items() if f["patient"].startswith("ZT-IDX-00")
    }
    r = send(https, "GET", f"{root}/studies?PatientID=ZT-P004&limit=1000", headers)
    assert [u for u in uids(r.json()) if u in loaded] == []
    # Case-insensitive name, fuzzy matching on a name component, modalities, includefield.
    r = send(https, "GET", f"{root}/studies?PatientName=index^patient0001", headers)
    assert set(uids(r.json())) == {u for u, f in mine.items() if f["n"] == 1}
    r = send(https, "GET", f"{root}/studies?PatientName=patient000&fuzzymatching=true", headers)
    assert set(uids(r.json())) == {u for u, f in mine.items() if f["n"] < 10}
    r = send(https, "GET", f"{root}/studies?PatientName=patient000", headers)
    assert r.json() == []  # without fuzzy matching a name matches whole
    r = send(
        https,
        "GET",
        f"{root}/studies?ModalitiesInStudy=MR&includefield=00081030&limit=1000",
        headers,
    )
    items = [i for i in r.json() if i["0020000D"]["Value"][0] in loaded]
    assert items and all("00081030" in i for i in items)
    assert all(i["00080061"]["Value"] == ["MR"] for i in items)
    # A key the index does not hold is matched by the archive, on permitted studies only.
    r = send(https, "GET", f"{root}/studies?PatientSex=F&limit=1000", headers)
    assert r.status_code == 200 and set(uids(r.json())) <= set(mine) | {
        s.study_instance_uid for s in STUDIES.values()
    }
    # Instance level across studies, narrowed by a study-level key.
    some = next(u for u, f in mine.items() if f["patient"] == "ZT-IDX-0004")
    r = send(https, "GET", f"{root}/instances?PatientID=ZT-IDX-0004", headers)
    assert set(uids(r.json())) == {some}
