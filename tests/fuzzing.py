"""Byte mutations shared by the hypothesis fuzz targets (checkpoints, model folders).

A mutation is ``(kind, arg)``: ``("flip", [(where, mask), ...])`` XORs bytes at relative
positions, ``("flip_header", ...)`` the same within the first ``header_end`` bytes,
``("truncate", fraction)``, ``("insert", (where, bytes))``, or ``("replace", bytes)``.
"""

from __future__ import annotations


def mutate(raw: bytes, mutation: tuple, header_end: int = 0) -> bytes:
    """``raw`` with one mutation applied."""
    kind, arg = mutation
    if kind in ("flip", "flip_header"):
        out = bytearray(raw)
        span = header_end if kind == "flip_header" else len(out)
        for where, mask in arg:
            out[int(where * span)] ^= mask
        return bytes(out)
    if kind == "truncate":
        return raw[: int(arg * len(raw))]
    if kind == "insert":
        i = int(arg[0] * len(raw))
        return raw[:i] + arg[1] + raw[i:]
    return arg
