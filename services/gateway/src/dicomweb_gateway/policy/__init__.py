"""Per-study policy: the model, its loader and the one pure `decide()` function."""

from __future__ import annotations

from .criteria import StudyFacts
from .decide import decide
from .loader import PolicyError, load_policy, parse_policy
from .model import Policy

__all__ = ["Policy", "PolicyError", "StudyFacts", "decide", "load_policy", "parse_policy"]
