"""``vitx serve``'s application served from a background thread (a notebook, a test, a screenshot or benchmark script):
a real uvicorn on 127.0.0.1 on a free port."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import uvicorn

START_TIMEOUT_S = 30
# Debian's chromium, as the browser test, the screenshot script and the page benchmark drive it (never a browser
# that Playwright downloads), with the flags that keep it off the network and inside a container's limits
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync")


@contextmanager
def serving(app):
    """Serve ``app`` (:func:`vitx.serve.app.create_app`) while the block runs; yields its origin, e.g.
    ``http://127.0.0.1:43117``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
