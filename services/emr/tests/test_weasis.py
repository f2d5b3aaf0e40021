"""The weasis:// launch URL's shape (the e2e test checks what its token can read)."""

from __future__ import annotations

import pytest
from ztemr.weasis import launch_url, parse

pytestmark = pytest.mark.control("ID-9")

ROOT = "https://localhost:8443/dicom-web"
UID = "1.2.826.0.1.3680043.8.498.1"


def test_shape_matches_the_weasis_protocol() -> None:
    url = launch_url(ROOT, UID, "eyJ.abc-_.x")
    assert url == (
        "weasis://%24dicom%3Ars+--url+%22https%3A%2F%2Flocalhost%3A8443%2Fdicom-web%22"
        "+-r+%22studyUID%3D1.2.826.0.1.3680043.8.498.1%22"
        "+-H+%22Authorization%3A+Bearer+eyJ.abc-_.x%22"
    )
    assert parse(url) == {"url": ROOT, "study": UID, "token": "eyJ.abc-_.x"}


@pytest.mark.parametrize(
    ("root", "study", "token"),
    [
        (ROOT, '1.2.3" -r "patientID=*', "t"),  # no second request smuggled in
        (ROOT, UID, 'a" -H "X: y'),
        ("http://localhost/dicom-web", UID, "t"),
        (ROOT, "1." + "1" * 70, "t"),
    ],
)
def test_nothing_can_break_out_of_its_argument(root: str, study: str, token: str) -> None:
    with pytest.raises(ValueError):
        launch_url(root, study, token)
