"""The FastAPI application of ``vitx serve``: the page, its assets and the HTTP API (README, "Web page and HTTP API").
Every error is a JSON body ``{"error": "<one line>"}`` with a 4xx (the client's) or 5xx status; explanations run on
one worker thread behind a bounded queue, never on the event loop."""
from __future__ import annotations

import re
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException as FastAPIHTTPException, Query, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from ..errors import VitxError, one_line
from . import drawing
from .catalogue import Catalogue, UnknownName
from .jobs import Busy, Job, Jobs
from .running import explanation_job, predictions, prepare, with_explanation
from .uploads import BadRequest, check_type, read_upload

STATIC_DIR = Path(__file__).with_name("static")
MAP_FILE = re.compile(r"(\d{1,4})(_overlay)?\.(png|npy)")
INDEX = re.compile(r"\d{1,4}")
WAIT_S = 600          # the longest ?wait=true waits for a job before answering its state as it is
FORM_SLACK = 64_000   # bytes a multipart body may hold beyond the image (boundaries, the other fields)


def create_app(models: list[str] | None = None, *, max_bytes: int = 8_000_000, max_pixels: int = 4096 * 4096,
               queue_size: int = 8, preload: bool = False) -> FastAPI:
    """The application. ``models``: names or files offered beside the zoo's (as ``vitx.load_model`` takes them);
    ``max_bytes`` and ``max_pixels``: limits of an uploaded image; ``queue_size``: explanation jobs that may wait
    (more: 503 busy); ``preload``: load every model now rather than on first use."""
    catalogue, jobs = Catalogue(models), Jobs(queue_size)
    if preload:
        for name in catalogue.entries:
            catalogue.model(name)
    app = FastAPI(title="vitx", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.catalogue, app.state.jobs = catalogue, jobs
    install_errors(app)
    app.add_middleware(BodyLimit, limit=max_bytes + FORM_SLACK, message=too_long(max_bytes))
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page():
        if not (STATIC_DIR / "index.html").is_file():
            raise HTTPException(404, "the page is not installed (vitx/serve/static/index.html is missing)")
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/models")
    def list_models():
        return {"models": [catalogue.row(name) for name in catalogue.entries]}

    @app.get("/api/methods")
    def list_methods(model: str | None = None):
        return {"model": model, "methods": catalogue.methods(model)}

    @app.get("/api/samples")
    def list_samples():
        return {"samples": catalogue.sample_rows()}

    @app.get("/api/samples/{name}")
    def sample(name: str):
        return Response(catalogue.sample(name), media_type="image/png")

    def picture_of(image: UploadFile | None, sample: str | None):
        if (image is None) == (not sample):
            raise BadRequest(400, "send either an image file ('image') or the name of a sample ('sample')")
        if image is None:
            return read_upload(catalogue.sample(sample), max_bytes, max_pixels), sample
        check_type(image.content_type)
        data = image.file.read(max_bytes + 1)
        return read_upload(data, max_bytes, max_pixels), Path(image.filename or "image.png").name or "image.png"

    @app.post("/api/predictions")
    def predict(model: str = Form(...), image: UploadFile | None = File(None), sample: str | None = Form(None),
                text: str | None = Form(None)):
        picture, name = picture_of(image, sample)
        return predictions(prepare(catalogue, model, picture, name, text))

    @app.post("/api/explain")
    def explain(model: str = Form(...), methods: str = Form(...), image: UploadFile | None = File(None),
                sample: str | None = Form(None), text: str | None = Form(None), target: str | None = Form(None),
                params: str | None = Form(None), wait: bool = Query(False)):
        picture, name = picture_of(image, sample)
        request = with_explanation(prepare(catalogue, model, picture, name, text), methods, target, params)
        job = jobs.submit(explanation_job(request))
        if wait:
            job.finished.wait(WAIT_S)
            return job_json(job, catalogue)
        return JSONResponse({"job": job.id, "status_url": f"/api/jobs/{job.id}"}, status_code=202)

    def find_job(job_id: str) -> Job:
        job = jobs.get(job_id)
        if job is None:
            raise UnknownName(f"no job {job_id[:40]!r}: it never was, or it is too old and was forgotten")
        return job

    @app.get("/api/jobs/{job_id}")
    def job_state(job_id: str):
        return job_json(find_job(job_id), catalogue)

    @app.delete("/api/jobs/{job_id}")
    def cancel(job_id: str):
        job = find_job(job_id)
        jobs.cancel(job)
        return {"job": job.id, "state": "cancelled" if job.state in ("queued", "running", "cancelled") else job.state}

    @app.get("/api/jobs/{job_id}/{k}/{file}")
    def job_map(job_id: str, k: str, file: str):
        job, found = find_job(job_id), MAP_FILE.fullmatch(file)
        if not INDEX.fullmatch(k) or not found or int(k) >= len(job.results):
            raise UnknownName(f"no map {k}/{file[:40]} in job {job.id}")
        exp, m = job.results[int(k)]["exp"], int(found[1])
        if exp is None or m >= len(exp):
            raise UnknownName(f"no map {k}/{file[:40]} in job {job.id}")
        if found[3] == "npy":
            return Response(drawing.map_npy(exp, m), media_type="application/octet-stream")
        return Response((drawing.overlay_png if found[2] else drawing.map_png)(exp, m), media_type="image/png")

    return app


def job_json(job: Job, catalogue: Catalogue) -> dict:
    """A job as the API answers it: its state, progress, command line and each method's maps by URL."""
    board = catalogue.scores.get(job.model, {}).get("methods", {})
    results = []
    for k, result in enumerate(list(job.results)):
        exp, base = result["exp"], f"/api/jobs/{job.id}/{k}"
        maps = []
        for m in range(0 if exp is None else len(exp)):
            entry = {"label": exp.object_label(m) if exp.detection else exp.target_name(m),
                     "png": f"{base}/{m}.png", "overlay": f"{base}/{m}_overlay.png", "npy": f"{base}/{m}.npy"}
            if exp.bimodal:
                entry["text"] = exp.text_relevance(m)
            maps.append(entry)
        results.append({"method": result["method"], "maps": maps,
                        "text": maps[0]["text"] if maps and "text" in maps[0] else None,
                        "scores": board.get(result["method"]), "error": result["error"]})
    return {"job": job.id, "state": job.state, "done": job.done, "total": job.total, "error": job.error,
            "command": job.command, "target": job.target, "warnings": job.warnings, "results": results}


def too_long(max_bytes: int) -> str:
    return f"the request is longer than the server's limit of {max_bytes:,} bytes for an image"


class BodyLimit:
    """ASGI middleware: a request body longer than ``limit`` bytes refused with 413 before it is read, by its
    Content-Length, or, sent without one (chunked), as soon as the bytes received pass the limit (FastAPI passes its
    own HTTPException through the form parser to the handlers), before the form parser spools any more of it."""

    def __init__(self, app, limit: int, message: str):
        self.app, self.limit, self.message = app, limit, message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await JSONResponse({"error": self.message}, status_code=413)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise FastAPIHTTPException(413, self.message)
            return message

        return await self.app(scope, counted, send)


def install_errors(app: FastAPI) -> None:
    """Every error answered as ``{"error": "<one line>"}``."""

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    app.add_exception_handler(BadRequest, lambda request, err: error(err.status, str(err)))
    app.add_exception_handler(UnknownName, lambda request, err: error(404, str(err)))
    app.add_exception_handler(VitxError, lambda request, err: error(400, one_line(err)))
    app.add_exception_handler(Busy, lambda request, err: error(503, str(err), {"Retry-After": "2"}))
    app.add_exception_handler(HTTPException, lambda request, err: error(err.status_code,
                                                                        one_line(err.detail or "error")))

    @app.exception_handler(RequestValidationError)
    def invalid(request, err: RequestValidationError):
        problems = [f"{'.'.join(str(part) for part in problem['loc'][1:]) or 'request'}: {problem['msg']}"
                    for problem in err.errors()]
        return error(400, "; ".join(problems)[:300])

    @app.exception_handler(Exception)
    def unexpected(request, err: Exception):
        return error(500, f"unexpected {type(err).__name__}: {one_line(err)[:300]}")
