"""``vitx serve``: the web page and its HTTP API (a face: parse, draw, serve; the explanations are vitx.explain's).
Needs the [serve] extra (FastAPI, uvicorn, python-multipart); :func:`vitx.serve.app.create_app` builds the app."""
