"""``vitx serve``'s HTTP API through FastAPI's test client: every route, every bad input answered with its 4xx and a
one-line message (and the server answering after each), the busy answer, cancel, and maps equal to vitx.explain's."""
from __future__ import annotations

import io
import json
import shlex
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402

import vitx  # noqa: E402
from vitx.cli import main  # noqa: E402
from vitx.serve import scores  # noqa: E402
from vitx.serve.app import create_app  # noqa: E402
from vitx.serve.jobs import Job, Jobs  # noqa: E402
from vitx.serve.uploads import BadRequest, read_upload  # noqa: E402

SAMPLES = Path(vitx.__file__).parent / "data" / "samples"
CIRCLE = (SAMPLES / "1_circle.png").read_bytes()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header says width x height (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app()) as client:
        yield client


def upload(data: bytes, content_type: str = "image/png", name: str = "picture.png") -> dict:
    return {"image": (name, data, content_type)}


def explain(client, *, files=None, wait=True, **form):
    form.setdefault("model", "shapes-vit")
    if files is None:
        form.setdefault("sample", "1_circle.png")
    return client.post("/api/explain", params={"wait": "true"} if wait else None, data=form, files=files)


def test_models_methods_samples(client):
    models = {row["name"]: row for row in client.get("/api/models").json()["models"]}
    assert {"shapes-vit", "shapes-vqa-dual", "shapes-detr", "shapes-clip"} <= set(models)
    assert models["shapes-vit"]["classes"][0] == "circle" and models["shapes-vit"]["image_size"] == 64
    assert (models["shapes-vqa-dual"]["text"], models["shapes-clip"]["text"]) == ("question", "prompts")
    assert models["shapes-detr"]["detector"] and models["shapes-detr"]["kind"] == "detr"
    assert "shapes-vit-shapley" not in models   # explainers and generators are not offered as models

    rows = {row["name"]: row for row in client.get("/api/methods", params={"model": "shapes-vit"}).json()["methods"]}
    assert rows["generic-attention"]["applies"] and rows["generic-attention"]["reason"] is None
    assert rows["generic-attention"]["scores"]["pointing_game"] == pytest.approx(0.764)
    assert rows["generic-attention"]["scores_command"].startswith("vitx bench --model shapes-vit ")
    better = rows["generic-attention"]["scores_better"]
    assert (better["pointing_game"], better["perturbation_positive_auc"]) == ("higher", "lower")
    assert not rows["vit-net"]["applies"] and "ViT-NeT" in rows["vit-net"]["reason"]
    every = client.get("/api/methods").json()["methods"]
    assert len(every) == len(vitx.methods()) and all(row["applies"] and row["reason"] is None for row in every)

    samples = client.get("/api/samples").json()["samples"]
    circle = next(row for row in samples if row["name"] == "1_circle.png")
    assert "shapes-vit" in circle["models"] and "shapes-detr" not in circle["models"]
    answer = client.get(circle["url"])
    assert answer.headers["content-type"] == "image/png" and answer.content == CIRCLE
    assert client.get("/").status_code == 200 and "<" in client.get("/").text


def test_predictions(client):
    answer = client.post("/api/predictions", data={"model": "shapes-vit", "sample": "1_circle.png"}).json()
    assert answer["predictions"][0]["class"] == "circle" and len(answer["predictions"]) == 5
    assert answer["objects"] is None
    probabilities = [row["probability"] for row in answer["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True) and probabilities[0] > 0.9
    clip = client.post("/api/predictions", files=upload((SAMPLES / "captions" / "blue_star_and_orange_cross.png")
                                                        .read_bytes()),
                       data={"model": "shapes-clip", "text": "a blue star\na red cross\n"}).json()
    assert [row["class"] for row in clip["predictions"]] == ["a blue star", "a red cross"]
    assert clip["warnings"] == [] and answer["warnings"] == []
    multi = client.post("/api/predictions", data={"model": "shapes-vit-multi", "sample": "vqa_0_triangle.png"}).json()
    model = vitx.load_model("shapes-vit-multi")
    picture = Image.open(SAMPLES / "vqa" / "0_triangle.png").convert("RGB")
    sigmoid = model(model.preprocess([picture]))[0].sigmoid()
    assert [row["probability"] for row in multi["predictions"]] == pytest.approx(
        sigmoid.sort(descending=True).values[:5].tolist(), abs=1e-4)   # sigmoids of a multi-label head, not a softmax
    unknown = client.post("/api/predictions", data={"model": "shapes-clip", "sample": "1_circle.png",
                                                    "text": "a blue zebra"}).json()
    assert len(unknown["warnings"]) == 1 and "zebra" in unknown["warnings"][0]   # said to the page, not the log
    job = explain(client, model="shapes-clip", sample="1_circle.png", methods="generic-attention", text="a blue zebra")
    assert job.json()["warnings"] == unknown["warnings"]


def test_api_maps_equal_vitx_explain(client):
    answer = explain(client, files=upload(CIRCLE), methods="generic-attention,raw-attention")
    assert answer.status_code == 200
    job = answer.json()
    assert job["state"] == "done" and (job["done"], job["total"]) == (2, 2)
    assert [result["method"] for result in job["results"]] == ["generic-attention", "raw-attention"]
    assert job["target"] == {"index": 0, "class": "circle"}
    assert job["command"] == ("vitx explain picture.png --model shapes-vit --method generic-attention,raw-attention "
                              "--out out/serve")
    first = job["results"][0]["maps"][0]
    got = np.load(io.BytesIO(client.get(first["npy"]).content))
    model = vitx.load_model("shapes-vit")
    want = vitx.explain(model, model.preprocess([Image.open(io.BytesIO(CIRCLE)).convert("RGB")]),
                        method="generic-attention").maps[0].numpy()
    assert got.dtype == np.float32 and got.shape == (64, 64)
    np.testing.assert_allclose(got, want, atol=1e-5)
    for url in (first["png"], first["overlay"]):
        picture = Image.open(io.BytesIO(client.get(url).content))
        assert picture.format == "PNG" and picture.size == (256, 256)


def test_params_and_target(client, tmp_path, capsys):
    job = explain(client, methods="rollout", target="star", params=json.dumps({"rollout": {"discard_ratio": 0.5}}))
    job = job.json()
    assert job["target"] == {"index": 3, "class": "star"} and job["results"][0]["maps"][0]["label"] == "star"
    assert "--target star" in job["command"] and "--param=rollout.discard_ratio=0.5" in job["command"]
    # the command line the page shows gives the very map the server gave
    argv = shlex.split(job["command"])[1:]
    argv[argv.index("1_circle.png")], argv[argv.index("--out") + 1] = str(SAMPLES / "1_circle.png"), str(tmp_path)
    assert main(argv) == 0
    capsys.readouterr()
    served = np.load(io.BytesIO(client.get(job["results"][0]["maps"][0]["npy"]).content))
    np.testing.assert_allclose(served, np.load(tmp_path / "1_circle_rollout.npy"), atol=1e-6)


def test_detector_gives_one_map_per_object(client):
    sample = "vqa_0_triangle.png"
    objects = client.post("/api/predictions", data={"model": "shapes-detr", "sample": sample}).json()["objects"]
    job = explain(client, model="shapes-detr", sample=sample, methods="generic-attention").json()
    maps = job["results"][0]["maps"]
    assert len(objects) >= 2 and len(maps) == len(objects) and job["total"] == len(objects)
    assert sorted(entry["label"].split()[0] for entry in maps) == sorted(row["class"] for row in objects)
    one = explain(client, model="shapes-detr", sample=sample, methods="generic-attention",
                  target=objects[0]["class"]).json()
    assert [entry["label"].split()[0] for entry in one["results"][0]["maps"]] == [objects[0]["class"]]


def test_bimodal_text(client):
    job = explain(client, model="shapes-vqa-dual", sample="vqa_4_star.png", methods="generic-attention",
                  text="what colour is the star?").json()
    text = job["results"][0]["text"]
    assert text["tokens"][:3] == ["[CLS]", "what", "colour"] and len(text["relevance"]) == len(text["tokens"])
    assert "--text 'what colour is the star?'" in job["command"]


NOT_A_PATH = "..%2F..%2Fetc%2Fpasswd"
BAD = {
    "unknown model": (404, "unknown model", lambda c: explain(c, model="nosuch", methods="rollout")),
    "unknown method": (404, "unknown method", lambda c: explain(c, methods="rollout,nosuch")),
    "no method": (400, "no method", lambda c: explain(c, methods=" ")),
    "method does not apply": (400, "ViT-NeT", lambda c: explain(c, methods="vit-net")),
    "question missing": (400, "question", lambda c: explain(c, model="shapes-vqa-dual", sample="vqa_4_star.png",
                                                            methods="generic-attention")),
    "prompts missing": (400, "prompt", lambda c: explain(c, model="shapes-clip", methods="generic-attention")),
    "prompts missing, predictions": (400, "prompt", lambda c: c.post("/api/predictions", data={
        "model": "shapes-clip", "sample": "1_circle.png", "text": "\n  \n"})),
    "target out of range": (400, "out of range", lambda c: explain(c, methods="rollout", target="99")),
    "target unknown": (400, "unicorn", lambda c: explain(c, methods="rollout", target="unicorn")),
    "prompt out of range": (400, "out of range", lambda c: explain(c, model="shapes-clip", methods="generic-attention",
                                                                   text="a star", target="3")),
    "params not JSON": (400, "JSON", lambda c: explain(c, methods="rollout", params="{rollout")),
    "param unknown": (400, "no parameter", lambda c: explain(c, methods="rollout", params='{"rollout": {"x": 1}}')),
    "param out of range": (400, "discard_ratio", lambda c: explain(c, methods="rollout",
                                                                   params='{"rollout": {"discard_ratio": 2}}')),
    "garbage upload": (400, "not an image", lambda c: explain(c, methods="rollout", files=upload(b"garbage" * 50))),
    "empty upload": (400, "empty", lambda c: explain(c, methods="rollout", files=upload(b""))),
    "truncated PNG": (400, "truncated", lambda c: explain(c, methods="rollout",
                                                          files=upload(CIRCLE[:len(CIRCLE) // 2]))),
    "decompression bomb": (413, "decompression bomb", lambda c: explain(c, methods="rollout",
                                                                        files=upload(png_claiming(30000, 30000)))),
    "too many pixels": (413, "5000x5000", lambda c: explain(c, methods="rollout",
                                                            files=upload(png_claiming(5000, 5000)))),
    "too many bytes": (413, "limit", lambda c: explain(c, methods="rollout", files=upload(b"\0" * 8_100_000))),
    "just over the limit": (413, "8,000,000", lambda c: explain(c, methods="rollout", files=upload(b"\0" * 8_000_001))),
    "wrong content type": (415, "content type", lambda c: explain(c, methods="rollout",
                                                                  files=upload(CIRCLE, "text/plain"))),
    "image and sample": (400, "either", lambda c: explain(c, methods="rollout", sample="1_circle.png",
                                                          files=upload(CIRCLE))),
    "model missing": (400, "model", lambda c: c.post("/api/predictions", data={"sample": "1_circle.png"})),
    "sample as a path": (404, "unknown sample", lambda c: explain(c, methods="rollout", sample="../../etc/passwd")),
    "sample URL as a path": (404, "", lambda c: c.get(f"/api/samples/{NOT_A_PATH}")),
    "sample URL with dots": (404, "", lambda c: c.get("/api/samples/..")),
    "job id as a path": (404, "", lambda c: c.get(f"/api/jobs/{NOT_A_PATH}")),
    "job id unknown": (404, "no job", lambda c: c.get("/api/jobs/" + "0" * 32)),
    "job cancel as a path": (404, "", lambda c: c.delete("/api/jobs/..")),
    "job cancel unknown": (404, "no job", lambda c: c.delete("/api/jobs/not-a-job")),
    "map of no job": (404, "no job", lambda c: c.get("/api/jobs/" + "a" * 32 + "/0/0.png")),
    "unknown route": (404, "Not Found", lambda c: c.get("/etc/passwd")),
    "static traversal": (404, "", lambda c: c.get(f"/static/{NOT_A_PATH}")),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests(client, case):
    status, words, send = BAD[case]
    answer = send(client)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert words.lower() in error.lower() and "\n" not in error and "Traceback" not in error
    assert client.get("/api/models").status_code == 200   # still answering


def test_bad_map_indices(client):
    job = explain(client, methods="raw-attention").json()
    base = f"/api/jobs/{job['job']}"
    assert client.get(f"{base}/0/0.npy").status_code == 200
    for path in ("/1/0.png", "/0/1.png", "/0/0.exe", "/x/0.png", "/0/..%2F0.png", "/0/-1.png"):
        answer = client.get(base + path)
        assert answer.status_code == 404 and "error" in answer.json(), path


def test_read_upload_refuses_a_bomb_beyond_its_own_limit():
    """With a pixel limit too high to catch it, PIL's own decompression-bomb check still refuses the image."""
    with pytest.raises(BadRequest) as err:
        read_upload(png_claiming(30000, 30000), 10_000, 10 ** 12)
    assert err.value.status == 413 and "decompression bomb" in str(err.value)
    assert read_upload(CIRCLE, 10_000, 64 * 64).size == (64, 64)


@pytest.fixture
def held():
    """An app whose queue holds one job and whose worker is held by an Event until the test ends."""
    gate = threading.Event()
    with TestClient(create_app(queue_size=1)) as client:
        jobs = client.app.state.jobs
        blocker = jobs.submit(Job(lambda job: gate.wait(30), total=1, command="hold"))
        while blocker.state != "running":
            blocker.finished.wait(0.01)
        yield client, jobs
        gate.set()


def test_busy_and_cancel(held):
    client, jobs = held
    queued = explain(client, methods="raw-attention", wait=False)
    assert queued.status_code == 202
    job_id = queued.json()["job"]
    assert queued.json()["status_url"] == f"/api/jobs/{job_id}"
    assert client.get(f"/api/jobs/{job_id}").json()["state"] == "queued"
    busy = explain(client, methods="raw-attention", wait=False)
    assert busy.status_code == 503 and busy.json()["error"].startswith("busy:") and busy.headers["Retry-After"]
    assert client.delete(f"/api/jobs/{job_id}").json() == {"job": job_id, "state": "cancelled"}
    assert client.get(f"/api/jobs/{job_id}").json()["state"] == "cancelled"
    assert client.get("/api/models").status_code == 200


def test_a_running_job_stops_at_its_next_chunk():
    jobs, started, seen = Jobs(queue_size=2), threading.Event(), []

    def work(job):
        started.set()
        for _ in range(1000):
            job.cancelled.wait(0.01)
            job.advance()
            seen.append(job.done)

    job = jobs.submit(Job(work, total=1000, command=""))
    started.wait(5)
    jobs.cancel(job)
    assert job.finished.wait(5) and job.state == "cancelled" and len(seen) < 1000
    failing = jobs.submit(Job(lambda job: torch.zeros(2) @ torch.zeros(3), total=1, command=""))
    assert failing.finished.wait(5) and failing.state == "error" and "size" in failing.error.lower()


def test_shipped_scores_are_the_benchmarks_page():
    page = Path(__file__).parent.parent / "docs" / "benchmarks.md"
    assert scores.load() == scores.parse(page.read_text(encoding="utf-8"))
    boards = scores.load()
    assert {"shapes-vit", "shapes-vqa-dual", "shapes-detr", "shapes-clip"} <= set(boards)
    assert boards["shapes-vit"]["methods"]["rollout"]["pointing_game"] == pytest.approx(0.886)
    assert "randomization_spearman" not in boards["shapes-vit"]["methods"]["dynamicvit"]   # n/a left out


def test_serve_without_the_extra(monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "vitx: error: vitx serve needs uvicorn: pip install 'vitx[serve]'"


def test_serve_command_line(capsys):
    from vitx.cli import build_parser
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.max_upload_mb, args.queue, args.model) == ("127.0.0.1", 8000, 8.0, 8, [])
    assert main(["serve", "--model", "nosuch"]) == 2   # a model given by name is loaded before serving
    assert capsys.readouterr().err.startswith("vitx: error: unknown model 'nosuch'")
    assert main(["serve", "--max-upload-mb", "0"]) == 2
    assert "expected a positive number" in capsys.readouterr().err


def test_a_long_body_without_its_length_is_cut_off():
    """A chunked upload (no Content-Length) is counted as it arrives and refused once past the limit."""
    def chunks():
        yield (b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nshapes-vit\r\n--b\r\nContent-Disposition: '
               b'form-data; name="image"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n')
        for _ in range(100):
            yield b"\0" * 10_000
        yield b"\r\n--b--\r\n"

    with TestClient(create_app(max_bytes=100_000)) as client:
        answer = client.post("/api/predictions", content=chunks(),
                             headers={"content-type": "multipart/form-data; boundary=b"})
        assert answer.status_code == 413 and "100,000 bytes" in answer.json()["error"]
        after = client.post("/api/predictions", data={"model": "shapes-vit", "sample": "1_circle.png"})
        assert after.status_code == 200
