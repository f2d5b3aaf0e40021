"""Reading DICOM JSON (PS3.18 F.2): the one place that knows how a value sits in an element.

`first(item, "0020000D")` is the first string value of an attribute (or None), `texts` every
string value (a PN as its Alphabetic group), `keywords(item)` a whole dataset as PS3.6 keyword
-> text (multiple values joined with `\\`, as PS3.5 6.4 writes them), which is how ingest rules
and the study index read attributes whatever archive answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydicom.datadict import keyword_for_tag


def texts(item: Mapping[str, Any], tag: str) -> list[str]:
    """String values of an attribute (PN as its Alphabetic group; numbers as written)."""
    element = item.get(tag)
    if not isinstance(element, dict):
        return []
    out: list[str] = []
    for value in element.get("Value") or []:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict) and isinstance(value.get("Alphabetic"), str):
            out.append(value["Alphabetic"])
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out.append(str(value))
    return out


def first(item: Mapping[str, Any], tag: str) -> str | None:
    """The first string value of an attribute, or None."""
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0]
    return None


def keywords(item: Mapping[str, Any]) -> dict[str, str]:
    """Top-level attributes with text values, by PS3.6 keyword (sequences and bulk left out)."""
    out: dict[str, str] = {}
    for tag in item:
        try:
            keyword = keyword_for_tag(int(tag, 16))
        except ValueError:
            continue
        values = texts(item, tag)
        if keyword and values:
            out[keyword] = "\\".join(values)
    return out
