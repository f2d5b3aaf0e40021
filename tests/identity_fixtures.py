"""Identity fixtures for the end-to-end tests (loaded by tests/conftest.py via pytest_plugins).

`tokens` logs demo users and devices in against the running local IdP through
`dicomweb_cli` (the same scripted form posts a person would make) and caches the results.
"""

from __future__ import annotations

from typing import Any

import pytest


class Tokens:
    """Obtains TokenSets from the IdP described by stack.json; cached per arguments."""

    def __init__(self, stack: dict[str, Any]) -> None:
        self.stack = stack
        self._cache: dict[tuple[Any, ...], Any] = {}

    def user(
        self,
        name: str,
        scope: str = "openid user/ImagingStudy.rs",
        acr_values: str | None = None,
        max_age: int | None = None,
    ) -> Any:
        from dicomweb_cli import login_password

        key = ("user", name, scope, acr_values, max_age)
        if max_age is not None:  # freshness matters: never reuse
            return login_password(self.stack, name, scope, acr_values=acr_values, max_age=max_age)
        if key not in self._cache:
            self._cache[key] = login_password(self.stack, name, scope, acr_values=acr_values)
        return self._cache[key]

    def user_dpop(self, name: str, scope: str, key: Any) -> Any:
        from dicomweb_cli import login_password

        return login_password(self.stack, name, scope, dpop_key=key)

    def device(self, client_id: str, scope: str) -> Any:
        from dicomweb_cli import client_credentials

        key = ("device", client_id, scope)
        if key not in self._cache:
            self._cache[key] = client_credentials(self.stack, client_id, scope)
        return self._cache[key]


@pytest.fixture(scope="session")
def tokens(stack: dict[str, Any]) -> Tokens:
    return Tokens(stack)
