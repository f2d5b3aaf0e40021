"""pytest plugin: a real PostgreSQL server for the tests marked `postgres` (issue 15).

`pg_cluster` (session): a throwaway cluster (`ztstack.postgres.Cluster`) initialised in a
temporary directory on a free loopback port, started on first use and removed at session end;
as root it runs as the `postgres` system user (the server refuses root). `pg_url` (function):
a fresh, empty database on it for one test, as a `postgresql://` URL. No mock anywhere: a test
that needs the database and finds no server installed fails (`make test` installs Debian's
`postgresql` through scripts/bootstrap.sh).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

_names = itertools.count(1)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    from ztstack.postgres import Cluster

    # fsync off: the tests prove behaviour, not durability against power loss (the bench and
    # the soak run with the server's defaults).
    cluster = Cluster.create({"fsync": "off", "synchronous_commit": "off"})
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def pg_url(pg_cluster: Any) -> str:
    """A new empty database for this test."""
    return str(pg_cluster.create_database(f"t{os.getpid()}_{next(_names)}"))
