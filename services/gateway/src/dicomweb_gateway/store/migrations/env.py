"""Alembic environment: run by `store.db.migrate()` with the connection already open."""

from __future__ import annotations

from alembic import context

from dicomweb_gateway.store.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    # The gateway database is shared (DPoP replay cache, rate limits): keep our own version table.
    version_table="policy_store_alembic_version",
)
with context.begin_transaction():
    context.run_migrations()
