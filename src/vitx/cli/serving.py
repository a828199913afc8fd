"""``vitx serve``: the web page and its HTTP API on a local uvicorn (the [serve] extra)."""
from __future__ import annotations

import importlib.util
import sys

from ..errors import VitxError

NEEDED = ("fastapi", "uvicorn", "multipart")


def run_serve(args) -> int:
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        names = ", ".join("python-multipart" if name == "multipart" else name for name in missing)
        raise VitxError(f"vitx serve needs {names}: pip install 'vitx[serve]'")
    import uvicorn

    from ..serve.app import create_app

    app = create_app(args.model, max_bytes=int(args.max_upload_mb * 1_000_000), max_pixels=args.max_pixels,
                     queue_size=args.queue)
    for name in args.model:   # a model given by name is loaded now, so a wrong name fails before serving
        app.state.catalogue.model(name)
    print(f"vitx: serving on http://{args.host}:{args.port}/ (Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
