"""Policy store tables (SQLAlchemy 2). Changed only through Alembic migrations (`migrations/`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, Dialect, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

UID_LENGTH = 64  # PS3.5 9.1: a UID is at most 64 characters


class UTCDateTime(TypeDecorator[datetime]):
    """Always UTC and timezone-aware in Python; naive UTC on SQLite (which has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Study(Base):
    """A study the gateway knows: who it belongs to and its sensitivity labels."""

    __tablename__ = "study"

    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), primary_key=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(32))  # stow | change-feed | admin
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    labels: Mapped[list[StudyLabel]] = relationship(
        back_populates="study", cascade="all, delete-orphan", lazy="selectin"
    )


class StudyLabel(Base):
    __tablename__ = "study_label"
    # The studies carrying a label, in order (the predicate's rare-label plan; migration 0007).
    __table_args__ = (Index("ix_study_label_label", "label", "study_instance_uid"),)

    study_instance_uid: Mapped[str] = mapped_column(
        ForeignKey("study.study_instance_uid", ondelete="CASCADE"), primary_key=True
    )
    label: Mapped[str] = mapped_column(String(128), primary_key=True)
    study: Mapped[Study] = relationship(back_populates="labels")


class LabelChange(Base):
    """History of every label change: who, when, why, what was added and removed."""

    __tablename__ = "label_change"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), index=True)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    changed_by: Mapped[str] = mapped_column(String(256))  # subject, or ingest/change-feed
    via: Mapped[str] = mapped_column(String(32))  # admin | stow | change-feed
    added: Mapped[str] = mapped_column(Text, default="")  # space-separated labels
    removed: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")


class BreakGlassGrant(Base):
    """A time-limited emergency grant for one caller and one study."""

    __tablename__ = "break_glass_grant"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(256), index=True)
    issuer: Mapped[str] = mapped_column(String(512))
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    reason: Mapped[str] = mapped_column(Text)
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class FeedCursor(Base):
    """Where the change-feed poller stopped reading the archive's `/changes`."""

    __tablename__ = "feed_cursor"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(Integer)


class UidClaim(Base):
    """Which study (and patient, series) a UID belongs to, recorded before the archive stores it.

    UIDs are identities (AP-7): once a Study, Series or SOP Instance UID is known here under one
    study, it is never accepted under another. The row is written in the same transaction that
    checks it, so two concurrent stores of one UID under two studies cannot both pass. It is also
    the series/instance -> study map of the study index.
    """

    __tablename__ = "uid_claim"

    level: Mapped[str] = mapped_column(String(8), primary_key=True)  # study | series | instance
    uid: Mapped[str] = mapped_column(String(UID_LENGTH), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), index=True)
    series_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    patient_id: Mapped[str | None] = mapped_column(String(64))


class DeviceRecord(Base):
    """A DICOM or DICOMweb peer of the deployment (DV-3): what it is, what it may do, when it
    was last seen. Registered entries come from the settings (DIMSE devices, legacy devices
    behind a bridge) and the identity provider's clients; `last_*` from the DIMSE front door."""

    __tablename__ = "device_inventory"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # dimse | legacy | dicomweb
    ae_title: Mapped[str | None] = mapped_column(String(16))
    host: Mapped[str | None] = mapped_column(String(64))
    client_id: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[str] = mapped_column(Text)  # space-separated
    permissions: Mapped[str] = mapped_column(Text)  # JSON list of sentences
    tls: Mapped[str] = mapped_column(String(200))
    certificate_sha256: Mapped[str | None] = mapped_column(String(64))
    certificate_not_after: Mapped[datetime | None] = mapped_column(UTCDateTime())
    registered: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_echo_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_store_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_address: Mapped[str | None] = mapped_column(String(64))
    last_tls: Mapped[str | None] = mapped_column(String(100))


class StudyIndexEntry(Base):
    """The study index: one row per study the archive holds, with its study-level QIDO keys.

    Searches are decided here (the policy compiled to SQL over these rows joined with `study`,
    the policy facts) and paged here; only the page is fetched from the archive. A row without
    facts (a study not yet labelled) never joins, so it is invisible (fail closed). Series and
    instances are mapped to their study by `uid_claim`. Strings are stored as read ('' when
    absent, so the sort order is the same on SQLite and PostgreSQL); `*_key` columns hold the
    upper-case form used for case-insensitive matching (docs/policy.md, "Study index").
    """

    __tablename__ = "study_index"
    __table_args__ = (
        Index("ix_study_index_order", "study_date", "study_time", "study_instance_uid"),
    )

    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), primary_key=True)
    archive_id: Mapped[str | None] = mapped_column(String(64), index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    patient_name_key: Mapped[str] = mapped_column(String(324), default="", index=True)
    referring_physician_key: Mapped[str] = mapped_column(String(324), default="")
    study_id: Mapped[str] = mapped_column(String(16), default="")
    study_description_key: Mapped[str] = mapped_column(String(64), default="")
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    last_update: Mapped[str] = mapped_column(String(32), default="")
    indexed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    seen_pass: Mapped[int] = mapped_column(Integer, default=0)


class StudyIndexModality(Base):
    """ModalitiesInStudy: one row per (study, modality)."""

    __tablename__ = "study_index_modality"

    study_instance_uid: Mapped[str] = mapped_column(
        ForeignKey("study_index.study_instance_uid", ondelete="CASCADE"), primary_key=True
    )
    modality: Mapped[str] = mapped_column(String(16), primary_key=True, index=True)
