"""De-identified views (DA-1): PS3.15 Annex E profile, keyed pseudonyms, the gateway hooks."""

from .profile import DEFAULT_OPTIONS, Act, Options, Profile, action, burned_in_reason
from .pseudonyms import Pseudonymizer

__all__ = [
    "DEFAULT_OPTIONS",
    "Act",
    "Options",
    "Profile",
    "Pseudonymizer",
    "action",
    "burned_in_reason",
]
