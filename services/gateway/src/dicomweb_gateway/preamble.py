"""The DICOM file preamble (PS3.10 7.1 and 7.5; CVE-2019-11687).

The 128-byte preamble before `DICM` may hold anything, which makes DICOM/executable polyglots
possible. Incoming files with an executable or script header there are refused or zeroed (by
setting); every application/dicom part the gateway returns is zeroed on the way out, streaming.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

PREAMBLE = 128
MAGIC = b"DICM"
_ZERO = bytes(PREAMBLE)
_MACHO = (
    b"\xfe\xed\xfa\xce",
    b"\xfe\xed\xfa\xcf",
    b"\xce\xfa\xed\xfe",
    b"\xcf\xfa\xed\xfe",
    b"\xca\xfe\xba\xbe",
)


def executable_kind(preamble: bytes) -> str | None:
    """The kind of executable header in a preamble, or None (FORMATS.md, DICOM preamble)."""
    if preamble[:2] == b"MZ":
        # A DOS stub; PE when e_lfanew (0x3C) points at "PE\0\0" inside the preamble, and
        # still refused otherwise because a DOS header has no business in a DICOM file.
        if len(preamble) >= 0x40:
            offset = int.from_bytes(preamble[0x3C:0x40], "little")
            if offset + 4 <= len(preamble) and preamble[offset : offset + 4] == b"PE\0\0":
                return "PE"
        return "MZ"
    if preamble[:4] == b"\x7fELF":
        return "ELF"
    if preamble[:4] in _MACHO:
        return "Mach-O"
    if preamble[:2] == b"#!":
        return "script"
    return None


def has_file_header(data: bytes) -> bool:
    return len(data) >= PREAMBLE + 4 and data[PREAMBLE : PREAMBLE + 4] == MAGIC


def zeroed(data: bytes) -> bytes:
    if has_file_header(data) and data[:PREAMBLE] != _ZERO:
        return _ZERO + data[PREAMBLE:]
    return data


async def zero_single(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A single application/dicom body (WADO-URI): zero its first 128 bytes."""
    head = bytearray()
    done = False
    async for chunk in chunks:
        if done:
            yield chunk
            continue
        head += chunk
        if len(head) >= PREAMBLE + 4:
            yield zeroed(bytes(head))
            done = True
    if not done and head:
        yield bytes(head)


async def zero_multipart(chunks: AsyncIterator[bytes], boundary: bytes) -> AsyncIterator[bytes]:
    """Zero the preamble of every part of a multipart/related body, without buffering it whole.

    Only the bytes right after each part's header block are inspected; everything else passes
    through. A carry-over keeps a delimiter or header block split across chunks intact.
    """
    delimiter = b"--" + boundary
    buf = bytearray()
    scan_from = 0  # bytes before this are processed
    async for chunk in chunks:
        buf += chunk
        while True:
            at = buf.find(delimiter, scan_from)
            if at < 0:
                # Nothing left to change except a delimiter that may be cut at the tail.
                safe = max(scan_from, len(buf) - len(delimiter) + 1)
                break
            after = at + len(delimiter)
            if buf[after : after + 2] == b"--":
                scan_from = after + 2  # the close delimiter; the epilogue follows
                continue
            headers_end = buf.find(b"\r\n\r\n", after)
            body = headers_end + 4
            if headers_end < 0 or len(buf) < body + PREAMBLE + 4:
                safe = at  # wait for this part's header block and preamble
                break
            if buf[body + PREAMBLE : body + PREAMBLE + 4] == MAGIC:
                buf[body : body + PREAMBLE] = _ZERO
            scan_from = body + PREAMBLE + 4
        if safe > 0:
            yield bytes(buf[:safe])
            del buf[:safe]
            scan_from = max(0, scan_from - safe)
    if buf:
        yield bytes(buf)
