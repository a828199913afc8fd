"""The Hugging Face hub (and any download host), seen from a loader: is it reachable, and what does the local
cache hold.

huggingface_hub retries an unreachable hub for about a minute before it gives up; the loaders ask
:func:`offline_reason` first and read the cache alone when the hub cannot be reached.
"""
from __future__ import annotations

import socket
import threading
from urllib.parse import urlparse

PROBE_SECONDS = 2.0


def offline_reason() -> str | None:
    """Why the hub cannot be reached ("HF_HUB_OFFLINE is set", "huggingface.co cannot be reached"), or None
    when it answers a connection within :data:`PROBE_SECONDS`."""
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    return unreachable(constants.ENDPOINT, "the hub")


def unreachable(address: str, what: str) -> str | None:
    """Why ``what``, at URL ``address``, cannot be reached ("<what> (<host>) cannot be reached": no connection
    to its host opened within :data:`PROBE_SECONDS`), or None when it answers."""
    url = urlparse(address)
    reached = threading.Event()

    def connect():  # name resolution cannot be given a timeout, so the probe runs beside this thread
        try:
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                     timeout=PROBE_SECONDS).close()
            reached.set()
        except OSError:
            pass
    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(PROBE_SECONDS)
    return None if reached.is_set() else f"{what} ({url.hostname}) cannot be reached"


def cached_file(repo_id: str | None, filenames: tuple[str, ...]) -> str | None:
    """The local path of the first of ``filenames`` that the hub cache holds for ``repo_id``, or None."""
    if not repo_id:
        return None
    from huggingface_hub import try_to_load_from_cache
    for filename in filenames:
        try:
            path = try_to_load_from_cache(repo_id, filename)
        except ValueError:  # not a repository id
            return None
        if isinstance(path, str):
            return path
    return None
