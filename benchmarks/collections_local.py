"""Images per second of the in-process collection engine beside ``vitx.explain`` on the same files.

    python benchmarks/collections_local.py                        # 500 shapes images, shapes-vit, raw-attention
    python benchmarks/collections_local.py --n 200 --methods raw-attention,generic-attention --repeats 3

Writes ``--n`` shapes images as PNG files into a temporary folder, then per method and repeat times (1)
``vitx.explain(model, model.preprocess(files))`` (the files decoded in one call) and (2)
``explain_collection(model, folder, [method], out)`` (each file decoded on its own, rows written to Parquet), both in
this process, and prints the best of the repeats and their ratio: the engine's overhead.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import vitx
from vitx.engines.local import explain_collection

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from collections_support import write_shapes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--model", default="shapes-vit")
    parser.add_argument("--methods", default="raw-attention")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = vitx.load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "images")
        write_shapes(folder, args.n)
        files = sorted(str(path) for path in folder.glob("*.png"))
        for method in args.methods.split(","):
            plain, engine = [], []
            for repeat in range(args.repeats):
                start = time.perf_counter()
                vitx.explain(model, model.preprocess(files), method=method, batch_size=args.batch_size)
                plain.append(time.perf_counter() - start)
                start = time.perf_counter()
                explain_collection(model, folder, [method], Path(tmp, f"out-{method}-{repeat}"),
                                   batch_size=args.batch_size)
                engine.append(time.perf_counter() - start)
            a, b = min(plain), min(engine)
            print(f"{method}: explain() {args.n / a:.0f} images/s, explain_collection {args.n / b:.0f} images/s, "
                  f"time ratio {b / a:.2f} (best of {args.repeats})")


if __name__ == "__main__":
    main()
