"""vitx bench --collection: per-image scores of a Parquet collection, in shards, resumable, merged into the
leaderboard that the in-memory benchmark gives on the same images."""
import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import vitx
from vitx.cli import main
from vitx.data import shapes
from vitx.engines import open_collection, read_errors
from vitx.engines.scores import read_scores
from vitx.engines.scoring import bench_collection

METHODS = "raw-attention,rollout,ground-truth"
METRICS = "perturbation_positive_auc,miou,map,pointing_game,energy_pointing_game,sparseness"


@pytest.fixture(scope="module")
def model():
    return vitx.load_model("shapes-vit")


@pytest.fixture(scope="module")
def collection(tmp_path_factory, model):
    """40 shapes images and masks as PNG files, listed with their labels in table.parquet; the same images (their
    8-bit pixels) in memory."""
    root = tmp_path_factory.mktemp("collection")
    data = shapes(n=40, seed=7, image_size=model.config.image_size[0])
    pixels = (data.images * 255).round().to(torch.uint8)
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rows = []
    for i in range(len(data)):
        Image.fromarray(pixels[i].permute(1, 2, 0).numpy()).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(data.masks[i].numpy().astype(np.uint8) * 255).save(root / "masks" / f"{i:03d}.png")
        rows.append({"path": f"images/{i:03d}.png", "label": data.class_names[int(data.labels[i])],
                     "mask": f"masks/{i:03d}.png"})
    pq.write_table(pa.Table.from_pylist(rows), root / "table.parquet")
    return root, dataclasses.replace(data, images=pixels.float() / 255), rows


def bench(capsys, *argv):
    code = main(["bench", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_two_shards_merged_equal_the_in_memory_benchmark(collection, model, tmp_path, capsys):
    root, data, _ = collection
    out = tmp_path / "out"
    for shard in ("0/2", "1/2"):
        code, text, err = bench(capsys, "--model", "shapes-vit", "--collection", root / "table.parquet", "--methods",
                                METHODS, "--metrics", METRICS, "--shard", shard, "--batch-size", 8, "--out", out)
        assert code == 0, err
        assert f"shard {shard}:" in text
    assert read_scores(out).num_rows == 40 * 3 * 7   # every image by every method: six metrics and its seconds
    code, text, err = bench(capsys, "--merge", out)
    assert code == 0, err
    assert "40 images scored" in text and "| raw-attention |" in text and "warning" not in err
    merged = json.loads((out / "results.json").read_text())
    assert (out / "leaderboard.md").read_text().startswith("`vitx bench --model shapes-vit --collection")
    memory = vitx.evaluate(model, data, METHODS.split(","), METRICS.split(","), batch_size=8)
    scores = read_scores(out).to_pandas()
    for method in METHODS.split(","):
        assert merged["methods"][method]["images"] == 40
        for metric in METRICS.split(","):
            for stat in (metric, f"{metric}_sem"):
                assert merged["methods"][method][stat] == pytest.approx(memory.results["methods"][method][stat],
                                                                        rel=1e-5, abs=1e-6), (method, stat)
            rows = scores[(scores.method == method) & (scores.metric == metric)].sort_values("key")
            np.testing.assert_allclose(rows.value.to_numpy(), memory.scores[method][metric].double().numpy(),
                                       rtol=1e-5, atol=1e-6)
    assert merged["n"] == 40 and merged["incomplete"] == [] and merged["errors"] == 0
    assert main(["merge", str(out), "--out", str(tmp_path / "scores.parquet")]) == 0   # vitx merge does the same
    assert json.loads((out / "results.json").read_text())["methods"] == merged["methods"]
    assert pq.read_table(tmp_path / "scores.parquet").num_rows == 40 * 3 * 7


def test_a_rerun_skips_what_is_done_and_a_corrupt_image_is_an_error_row(collection, model, tmp_path):
    root, _, rows = collection
    (root / "broken.png").write_bytes(b"not a png at all")
    table = root / "with_broken.parquet"
    pq.write_table(pa.Table.from_pylist(rows[:12] + [{"path": "broken.png", "label": "star", "mask": rows[0]["mask"]}]),
                   table)
    out = tmp_path / "out"
    options = {"metrics": ["pointing_game", "sparseness"], "batch_size": 4}
    first = bench_collection(model, open_collection(table), ["raw-attention"], out, shard=(0, 2), **options)
    whole = bench_collection(model, open_collection(table), ["raw-attention"], out, **options)
    assert first["skipped"] == 0 and first["done"] > 0
    assert whole["skipped"] == first["done"] and first["done"] + whole["done"] == 12
    assert first["errors"] + whole["errors"] >= 1
    again = bench_collection(model, open_collection(table), ["raw-attention"], out, **options)
    assert again == {"done": 0, "skipped": 12, "errors": 1}    # the broken image is retried, and fails again
    scores = read_scores(out)
    assert sorted(set(scores.column("key").to_pylist())) == sorted(row["path"] for row in rows[:12])
    assert scores.num_rows == 12 * 3
    errors = read_errors(out)
    assert errors.column("key").to_pylist() == ["broken.png"]
    assert "cannot read" in errors.column("reason")[0].as_py()
    lost = sorted((out / "scores").glob("part-0of2-*.parquet"))   # as if a crash had lost shard 0's rows
    assert len(lost) == 1
    lost[0].unlink()
    redone = bench_collection(model, open_collection(table), ["raw-attention"], out, **options)
    assert redone["done"] == first["done"] and redone["skipped"] == 12 - first["done"]
    assert read_scores(out).num_rows == 12 * 3


@pytest.mark.parametrize("columns, argv, message", [
    (("path", "label"), (), "has no mask"),
    (("path", "mask"), (), "has no label"),
    (("path", "label", "mask"), ("--label", "hexagon"), "unknown target class 'hexagon'"),
    (("path", "label", "mask"), ("--label", "8"), "out of range: this model has 8 classes"),
    (("path", "label", "mask"), ("--metrics", "randomization_spearman"), "left out of the collection benchmark"),
    (("path", "label", "mask"), ("--shard", "2/2"), "K must be at least 0 and less than N"),
    (("path", "label", "mask"), ("--methods", "no-such-method"), "no-such-method"),
    (("path", "label", "mask"), ("--actors", "2"), "--actors applies to --engine ray"),
    (("path", "label", "mask"), ("--score-threshold", "0.5"), "--score-threshold applies to detectors"),
])
def test_bad_input_is_one_line_before_any_work(collection, tmp_path, capsys, columns, argv, message):
    root, _, rows = collection
    argv = list(argv)
    label = argv[1] if argv[:1] == ["--label"] else None
    argv = argv[2:] if label else argv
    table = root / f"bad_{tmp_path.name}.parquet"
    pq.write_table(pa.Table.from_pylist([{c: (label if c == "label" and label else row[c]) for c in columns}
                                         for row in rows[:5]]), table)
    out = tmp_path / "out"
    code, _, err = bench(capsys, "--model", "shapes-vit", "--collection", table, "--methods", "raw-attention",
                         *argv, "--out", out)
    assert code == 2
    assert err.startswith("vitx: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_merge_without_a_benchmark_and_shard_without_a_collection_are_refused(tmp_path, capsys):
    code, _, err = bench(capsys, "--merge", tmp_path)
    assert code == 2 and "holds no collection benchmark" in err
    code, _, err = bench(capsys, "--model", "shapes-vit", "--shard", "0/2", "--out", tmp_path / "x")
    assert code == 2 and "--shard applies to --collection runs only" in err
    code, _, err = bench(capsys, "--model", "shapes-vit", "--actors", "2", "--out", tmp_path / "x")
    assert code == 2 and "--actors applies to --collection runs only" in err
    assert not (tmp_path / "x").exists()
