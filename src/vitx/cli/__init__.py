"""The ``vitx`` command: explain images, benchmark methods, list the methods and the zoo, train zoo models.

Errors the user can fix (:class:`~vitx.VitxError`, bad arguments) end in one line on stderr and exit
status 2; anything unexpected in one line naming it and status 1 (``--debug`` shows the traceback).
Every command checks its arguments (images, model, device, methods and their ``--param`` values, target,
output directory) before it creates anything, and leaves no empty output directory behind when it fails.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from .. import __version__
from ..errors import VitxError, one_line
from ..viz import ROWS_PER_PAGE
from ..engines.store import ROWS_PER_PART
from ..zoo import ZOO_DIR
from .benching import run_bench
from .collections import run_explain_any, run_merge
from .explaining import applicable_methods
from .listings import run_generate, run_methods, run_models, run_train
from .options import config_override, device, fraction, literal, memory_size, method_param, positive_int, \
    positive_number
from .serving import run_serve

__all__ = ["applicable_methods", "build_parser", "literal", "main"]


class Parser(argparse.ArgumentParser):
    """argparse whose errors are raised as one-line VitxErrors instead of printed with the usage."""

    def error(self, message: str):
        raise VitxError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> Parser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser = Parser(prog="vitx", description="Explain the predictions of Vision Transformers.")
    parser.add_argument("--version", action="version", version=f"vitx {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("explain", parents=[common], help="explain images with one or more methods",
                            description="Explain every image with every method; write each method's overlays and "
                                        "maps (.npy) into --out as it finishes, then grid.png and index.html "
                                        f"(paginated: grid_001.png, ... beyond {ROWS_PER_PAGE} images). With a "
                                        "bi-modal model and --text, the overlays also show the question's words "
                                        "coloured by relevance and the answer, and each method writes the text "
                                        "map (<image>_<method>_text.json). With a detector, each object over "
                                        "--score-threshold (or each --target query or class) gets its overlay, "
                                        "box and label drawn, and map (<image>_q<query>_<class>_<method>), listed "
                                        "with its class, score and box in objects.json; no detection: a warning "
                                        "and nothing written.")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (PNG, JPEG, ...), or one collection: a folder (recursive), a quoted glob, a "
                        ".txt/.lst list of paths or a .parquet table (column path; optional label, target, mask), "
                        "explained into Parquet rows under --out (see docs/scale.md)")
    p.add_argument("--model", required=True,
                   help="zoo name (see `vitx models`), timm:<name>, torchvision:<name>, hf:<directory> or a "
                        ".safetensors file")
    p.add_argument("--arch", help="architecture of a .safetensors file with timm's keys, e.g. vit_small_patch16_224")
    p.add_argument("--weights", help="local weights file for a timm:<name> or torchvision:<name> model")
    p.add_argument("--method", required=True, help="comma-separated method names (see `vitx methods`), or 'all'")
    p.add_argument("--text", action="append", metavar="TEXT",
                   help="a bi-modal (VQA) model's question about an image: one --text per image, in the images' "
                        "order; an image-text (CLIP) model's prompt: each image is explained with every prompt "
                        "(<image>_p<prompt index>_<method> files); words outside the model's vocabulary are read as "
                        "its unknown token, with a warning")
    p.add_argument("--target", help="class to explain: an index, or a name or any of its comma-separated synonyms, "
                                    "in any case; a VQA model's answer, e.g. yes (default: each image's predicted "
                                    "class or answer); a detector's comma-separated query indices (3,5: those "
                                    "queries of every image, whatever their score) or class names (circle,star: the "
                                    "detections of those classes); an image-text model's prompt, by index or "
                                    "text (default: every prompt)")
    p.add_argument("--score-threshold", type=fraction, metavar="P",
                   help="a detector's objects to explain: every detection whose class probability is above P "
                        "(default: 0.5); detectors only")
    p.add_argument("--param", action="append", default=[], type=method_param, metavar="METHOD.NAME=VALUE",
                   help="a parameter of one method, e.g. rise.masks=500 (repeatable; see `vitx methods --json`)")
    p.add_argument("--device", type=device, help="torch device, e.g. cpu, cuda or cuda:1 (default: cpu)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="the most images per chunk (default: 32)")
    p.add_argument("--resize", choices=("stretch", "crop", "pad"), default="stretch",
                   help="fit each image to the model's size: stretch (default), crop the centre of the short side's "
                        "square, or pad to a square with the model's mean colour")
    p.add_argument("--original-size", action="store_true",
                   help="write the .npy maps at each image's original size (the overlays stay at the model's)")
    p.add_argument("--memory", type=memory_size, help="memory budget of a chunk, e.g. 4GB; chunks shrink to fit each "
                                                      "method's declared memory (default: half of what is available)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--shard", metavar="K/N", help="a collection's shard K of N (0 <= K < N), chosen by a hash of each "
                                                  "image's key, for a scheduler to run the parts (default: 0/1)")
    p.add_argument("--overlays", action="store_true", help="a collection's overlays too (--out/overlays/)")
    p.add_argument("--rows-per-part", type=positive_int, metavar="R",
                   help=f"a collection's rows per Parquet part file, the most a crash loses (default: {ROWS_PER_PART})")
    p.add_argument("--engine", choices=("local", "ray"), help="a collection's engine: local (this process, the "
                                                              "default) or ray (needs pip install 'vitx[ray]')")
    p.add_argument("--ray-address", metavar="ADDR", help="--engine ray: an existing cluster's address (default: a "
                                                         "local cluster)")
    p.add_argument("--actors", type=positive_int, help="--engine ray: model actors (default: 1)")
    p.set_defaults(run=run_explain_any)

    p = commands.add_parser("merge", parents=[common], help="a collection run's shards as one table",
                            description="Print the rows and errors of each shard of a `vitx explain <collection>` "
                                        "run; with --out, write every row as one Parquet table. Of a `vitx bench "
                                        "--collection` run: write its results.json and leaderboard.md over every "
                                        "shard (as `vitx bench --merge`), and with --out its score rows as one table.")
    p.add_argument("dir", type=Path, help="the run's --out directory")
    p.add_argument("--out", type=Path, help="a .parquet file to write")
    p.set_defaults(run=run_merge)

    for name, rows in (("methods", "the explanation methods"), ("models", "the zoo models")):
        p = commands.add_parser(name, parents=[common], help=f"list {rows}", description=f"List {rows}.")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.set_defaults(run=run_methods if name == "methods" else run_models)

    p = commands.add_parser("bench", parents=[common], help="score methods on shapes images (or shapes_vqa questions) "
                                                            "with known ground truth",
                            description="Run every method on the same N fresh shapes images (on a VQA model: N "
                                        "shapes_vqa image-question pairs, scored on both modalities; on an image-text "
                                        "model: N shapes_captions images, each with the prompts naming two of its "
                                        "objects) and compute every "
                                        "metric; write results.json, results.csv, leaderboard.md, curve plots, "
                                        "gallery.png and report.html into --out.")
    p.add_argument("--model", help="a model trained on shapes, shapes_vqa or shapes_captions (or on the --collection's "
                                    "classes): zoo name, or a file as for explain (required but with --merge)")
    p.add_argument("--arch", help="architecture of a .safetensors file with timm's keys")
    p.add_argument("--methods", default="all", help="comma-separated method names, or 'all' (default), which adds "
                                                    "the reference rows random and ground-truth")
    p.add_argument("--metrics", help="comma-separated metric names (default: every metric that applies)")
    p.add_argument("--n", type=positive_int, default=500, help="number of images or pairs (default: 500)")
    p.add_argument("--score-threshold", type=fraction, metavar="P",
                   help="a detector's objects to score: its detections with a class probability above P (default: "
                        "0.5); detectors only")
    p.add_argument("--seed", type=int, default=0, help="data seed, also seeds stochastic methods (default: 0)")
    p.add_argument("--sanity-images", type=positive_int, default=100,
                   help="images for the randomisation check, which re-runs each method once per block "
                        "(default: the first 100)")
    p.add_argument("--param", action="append", default=[], type=method_param, metavar="METHOD.NAME=VALUE",
                   help="a parameter of one method, e.g. rise.masks=1000 (repeatable; see `vitx methods --json`)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows of --out's previous run for the methods it scored on the same images, "
                        "seed, parameters and metrics; run only the others")
    p.add_argument("--device", type=device, help="torch device, e.g. cpu, cuda or cuda:1 (default: cpu)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per chunk (default: 32)")
    p.add_argument("--out", type=Path, help="output directory (required but with --merge)")
    p.add_argument("--collection", metavar="SPEC",
                   help="score the methods on a collection instead of fresh shapes images: a Parquet table with "
                        "'path', 'label' (class name or index) and 'mask' (mask image path) columns; per-image scores "
                        "go to --out/scores (resumable: a rerun skips what is done), unreadable images to "
                        "--out/errors; --n and --sanity-images do not apply, nor the randomisation check")
    p.add_argument("--shard", metavar="K/N", help="with --collection: score only shard K of N (0 <= K < N); merge "
                                                  "the shards with --merge")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="with --collection: where the images are scored (default: local, this process)")
    p.add_argument("--ray-address", metavar="ADDR", help="with --engine ray: an existing cluster's address, host:port "
                                                         "or ray://host:port (default: start a local one)")
    p.add_argument("--actors", type=positive_int, default=1,
                   help="with --engine ray: actors that score chunks, each loading the model once (default: 1)")
    p.add_argument("--merge", type=Path, metavar="DIR",
                   help="merge the shards of a --collection benchmark written in DIR into DIR's results.json and "
                        "leaderboard.md (mean ± standard error over every image)")
    p.set_defaults(run=run_bench)

    p = commands.add_parser("generate", parents=[common], help="draw shapes images with a trained generator",
                            description="Write samples of a GAN generator trained by `vitx train` (PNG files and "
                                        "a grid).")
    p.add_argument("--model", default="shapes-nest-gan", help="zoo name or file (default: shapes-nest-gan)")
    p.add_argument("--n", type=positive_int, default=16, help="number of images (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent vectors (default: 0)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.set_defaults(run=run_generate)

    p = commands.add_parser("train", parents=[common], help="train a zoo model",
                            description="Train a zoo model (see `vitx models`) and write its checkpoint and card.")
    p.add_argument("name", help="zoo model name")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--out", type=Path, default=ZOO_DIR, help="output directory (default: the zoo directory)")
    p.add_argument("--config", action="append", default=[], type=config_override, metavar="NAME=VALUE",
                   help="override a field of the architecture's configuration, e.g. patch_size=2 or "
                        "\"depths=(1, 2, 8)\" (repeatable; classifiers)")
    p.add_argument("--workers", type=int, help="processes that draw the training batches ahead (default: 0, in "
                                               "this process; the data are the same either way)")
    p.add_argument("--device", type=device, help="torch device the model trains on, e.g. cpu or cuda (the VQA, "
                                                 "detector and image-text recipes; default: cpu)")
    p.set_defaults(run=run_train)

    p = commands.add_parser("serve", parents=[common], help="serve the web page and its HTTP API",
                            description="Serve a web page to explain images with any method side by side, and the "
                                        "HTTP API under it (see the README's \"Web page and HTTP API\"). Needs "
                                        "pip install 'vitx[serve]'.")
    p.add_argument("--model", action="append", default=[], metavar="M",
                   help="a model offered beside the zoo's: zoo name, timm:<name>, hf:<directory> or a .safetensors "
                        "file (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=positive_int, default=8000, help="port (default: 8000)")
    p.add_argument("--max-upload-mb", type=positive_number, default=8.0, metavar="MB",
                   help="largest image upload in megabytes (default: 8)")
    p.add_argument("--max-pixels", type=positive_int, default=4096 * 4096,
                   help="most pixels of an uploaded image, read from its header before decoding (default: 4096x4096)")
    p.add_argument("--queue", type=positive_int, default=8,
                   help="explanation jobs that may wait; more are answered 503 busy (default: 8)")
    p.set_defaults(run=run_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    debug = False
    try:
        args = build_parser().parse_args(argv)
        debug = args.debug
        return args.run(args)
    except SystemExit as done:  # --help
        return done.code or 0
    except KeyboardInterrupt:
        print("vitx: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of the output went away, e.g. `vitx methods | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:
        if debug:
            traceback.print_exc()
        if isinstance(err, VitxError):
            print(f"vitx: error: {one_line(err)}", file=sys.stderr)
            return 2
        print(f"vitx: error: unexpected {type(err).__name__}: {one_line(err)}"
              f"{'' if debug else ' (run with --debug to see the traceback)'}", file=sys.stderr)
        return 1
