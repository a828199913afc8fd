"""Deterministic shards of a collection: an item belongs to shard ``k`` of ``n`` when the SHA-1 of its key, read as
an integer, is ``k`` modulo ``n``. A key's shard depends on the key alone, so it stays put when the collection grows
and any scheduler (a SLURM array, Kubernetes jobs, a shell loop) can run the parts independently."""
from __future__ import annotations

import hashlib
import re

from ..errors import VitxError

WHOLE = (0, 1)


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(k, n)`` with integers ``0 <= k < n``; anything else is a one-line :class:`VitxError`."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise VitxError(f"--shard must be K/N with integers 0 <= K < N (e.g. 0/4), got {text!r}")
    k, n = int(match[1]), int(match[2])
    if not 0 <= k < n:
        raise VitxError(f"--shard {text!r}: K must be at least 0 and less than N (shards are 0/{n} ... "
                        f"{max(n - 1, 0)}/{n})" if n else f"--shard {text!r}: N must be at least 1")
    return k, n


def check_shard(shard) -> tuple[int, int]:
    """A ``(k, n)`` pair checked as :func:`parse_shard` checks its text."""
    try:
        k, n = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise VitxError(f"a shard is a pair (k, n) of integers, got {shard!r}") from None
    return parse_shard(f"{k}/{n}")


def shard_of(key: str, n: int) -> int:
    """The shard (of ``n``) that ``key`` belongs to."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % n


def in_shard(key: str, k: int, n: int) -> bool:
    return n == 1 or shard_of(key, n) == k
