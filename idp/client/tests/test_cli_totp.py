"""TOTP code selection: single-use steps at the IdP mean back-to-back logins move forward."""

from __future__ import annotations

import time

import pyotp
from dicomweb_cli import login


def test_consecutive_codes_use_increasing_steps() -> None:
    secret = pyotp.random_base32()
    key = ("https://idp.example", "u")
    first = login.next_totp(*key, secret)
    step1 = login._totp_last[key]
    second = login.next_totp(*key, secret)
    step2 = login._totp_last[key]
    assert step2 == step1 + 1
    assert step1 >= int(time.time()) // 30 - 1
    totp = pyotp.TOTP(secret)
    assert first == totp.at(step1 * 30) and second == totp.at(step2 * 30)
    assert totp.verify(second, valid_window=1)
