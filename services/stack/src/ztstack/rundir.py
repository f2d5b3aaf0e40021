"""The run directory layout (docs/internals.md, "Run directory"): one place for every path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def at(cls, path: str | Path) -> RunDir:
        return cls(Path(path).expanduser().resolve())

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def orthanc(self) -> Path:
        return self.root / "orthanc"

    @property
    def idp(self) -> Path:
        return self.root / "idp"

    @property
    def gateway(self) -> Path:
        return self.root / "gateway"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def stack_json(self) -> Path:
        return self.root / "stack.json"

    @property
    def ports_json(self) -> Path:
        """The ports chosen by the first `up`, reused by later ones (stable URLs)."""
        return self.root / "ports.json"

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def pid(self, service: str) -> Path:
        return self.pids / f"{service}.pid"

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for d in (self.pki, self.orthanc, self.idp, self.gateway, self.logs, self.pids):
            d.mkdir(exist_ok=True)
        self.secrets.mkdir(mode=0o700, exist_ok=True)
        self.secrets.chmod(0o700)
