"""``vitx serve`` under load: a real uvicorn on 127.0.0.1, 32 concurrent requests, good and bad mixed, every one with a
timeout: each good request answered with its maps, each bad one with its 4xx, and the server alive after."""
from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import vitx  # noqa: E402
from vitx.serve.app import create_app  # noqa: E402
from vitx.serve.background import serving  # noqa: E402

SAMPLES = Path(vitx.__file__).parent / "data" / "samples"
REQUESTS = 32
TIMEOUT_S = 60       # each request
TOTAL_S = 120        # the whole load


@pytest.fixture(scope="module")
def server():
    with serving(create_app(queue_size=REQUESTS)) as origin:
        yield origin


def requests() -> list[tuple[str, dict, int, str | None]]:
    """(form and files, expected status, expected method or None) for each of :data:`REQUESTS` requests."""
    circle = (SAMPLES / "1_circle.png").read_bytes()
    good = [("raw-attention", {"data": {"model": "shapes-vit", "methods": "raw-attention", "sample": name}})
            for name in ("1_circle.png", "18_star.png", "4_square.png")]
    good.append(("rollout", {"data": {"model": "shapes-vit", "methods": "rollout"},
                             "files": {"image": ("circle.png", circle, "image/png")}}))
    bad = [(404, {"data": {"model": "nosuch", "methods": "raw-attention", "sample": "1_circle.png"}}),
           (404, {"data": {"model": "shapes-vit", "methods": "nosuch", "sample": "1_circle.png"}}),
           (400, {"data": {"model": "shapes-vit", "methods": "raw-attention", "target": "99",
                           "sample": "1_circle.png"}}),
           (400, {"data": {"model": "shapes-vit", "methods": "raw-attention"},
                  "files": {"image": ("x.png", b"not an image at all", "image/png")}}),
           (400, {"data": {"model": "shapes-vit", "methods": "raw-attention"},
                  "files": {"image": ("x.png", circle[:200], "image/png")}}),
           (415, {"data": {"model": "shapes-vit", "methods": "raw-attention"},
                  "files": {"image": ("x.txt", circle, "text/plain")}})]
    mixed = []
    for i in range(REQUESTS):
        if i % 2:
            method, form = good[i // 2 % len(good)]
            mixed.append((form, 200, method))
        else:
            status, form = bad[i // 2 % len(bad)]
            mixed.append((form, status, None))
    return mixed


def send(base: str, form: dict) -> httpx.Response:
    with httpx.Client(base_url=base, timeout=TIMEOUT_S) as client:
        for _ in range(20):   # a busy server says so; come back as it asks
            answer = client.post("/api/explain", params={"wait": "true"}, **form)
            if answer.status_code != 503:
                return answer
            time.sleep(float(answer.headers.get("Retry-After", "1")))
        return answer


def test_32_concurrent_requests(server):
    with httpx.Client(base_url=server, timeout=TIMEOUT_S) as client:   # loaded once before the load
        assert client.get("/api/models").status_code == 200
    cases = requests()
    with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
        futures = [pool.submit(send, server, form) for form, _, _ in cases]
        finished, pending = wait(futures, timeout=TOTAL_S)
    assert not pending, f"{len(pending)} of {REQUESTS} requests unanswered after {TOTAL_S} s"
    for (form, status, method), future in zip(cases, futures):
        answer = future.result()
        assert answer.status_code == status, (form["data"], answer.text)
        if status != 200:
            error = answer.json()["error"]
            assert error and "\n" not in error
            continue
        job = answer.json()
        assert job["state"] == "done" and [result["method"] for result in job["results"]] == [method]
        with httpx.Client(base_url=server, timeout=TIMEOUT_S) as client:
            values = np.load(io.BytesIO(client.get(job["results"][0]["maps"][0]["npy"]).content))
        assert values.shape == (64, 64) and 0 <= values.min() and values.max() == pytest.approx(1.0)
    with httpx.Client(base_url=server, timeout=TIMEOUT_S) as client:
        assert client.get("/api/models").status_code == 200
        answer = client.post("/api/predictions", data={"model": "shapes-vit", "sample": "1_circle.png"})
        assert answer.status_code == 200 and answer.json()["predictions"][0]["class"] == "circle"
