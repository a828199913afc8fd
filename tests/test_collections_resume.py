"""Collection runs end to end on shapes-vit: rows as the contract says, a corrupt file logged and the rest explained,
resume after a SIGKILL giving exactly an uninterrupted run's rows, bad command lines refused before --out exists, and
`vitx merge`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import vitx
from vitx.cli import main
from vitx.engines import read_errors, read_manifest, read_rows, row_array
from vitx.engines.local import explain_collection

from collections_support import write_shapes

METHODS = "raw-attention,rollout"
SRC = str(Path(vitx.__file__).parents[1])


@pytest.fixture(scope="module")
def model():
    return vitx.load_model("shapes-vit")


def by_pair(table: pa.Table) -> dict:
    pairs = list(zip(table.column("key").to_pylist(), table.column("method").to_pylist()))
    return {pair: i for i, pair in enumerate(pairs)}


def test_rows_hold_what_the_contract_says(tmp_path, model):
    written = write_shapes(tmp_path / "imgs", 6)
    counts = explain_collection(model, tmp_path / "imgs", METHODS, tmp_path / "out", batch_size=4, overlays=True)
    assert counts == {"done": 12, "skipped": 0, "errors": 0}
    rows = read_rows(tmp_path / "out")
    assert rows.schema.names == ["key", "path", "method", "params", "target", "target_name", "label", "logits",
                                 "token_map", "token_shape", "map", "map_shape"]
    index = by_pair(rows)
    assert len(index) == rows.num_rows == 12
    size, grid = model.config.image_size, model.layout(model.preprocess(str(tmp_path / "imgs/img_000.png"))).grid
    for name, _ in written[:3]:
        for method in METHODS.split(","):
            i = index[(name, method)]
            exp = vitx.explain(model, model.preprocess(str(tmp_path / "imgs" / name)), method=method)
            assert np.allclose(row_array(rows, i), exp.maps[0].numpy(), atol=1e-5)
            assert np.allclose(row_array(rows, i, "token_map"), exp.token_maps[0].numpy(), atol=1e-5)
            assert row_array(rows, i).shape == tuple(size) and row_array(rows, i, "token_map").shape == tuple(grid)
            assert rows.column("target")[i].as_py() == int(exp.targets[0])
            assert rows.column("target_name")[i].as_py() == exp.target_name(0)
            assert np.allclose(rows.column("logits")[i].values.to_numpy(), exp.logits[0].numpy(), atol=1e-4)
            assert rows.column("path")[i].as_py() == str(tmp_path / "imgs" / name)
            assert (tmp_path / "out" / "overlays" / f"{Path(name).stem}_{method}.png").is_file()
    assert read_manifest(tmp_path / "out")["shards"]["0/1"] == {
        "rows": 12, "errors": 0, "complete": True, "row_parts": ["part-0of1-00000.parquet"], "error_parts": []}


def test_a_table_gives_labels_and_targets(tmp_path, model):
    written = write_shapes(tmp_path / "imgs", 3)
    pq.write_table(pa.table({"path": [f"imgs/{name}" for name, _ in written], "label": [c for _, c in written],
                             "target": pa.array([None, 2, 0], pa.int64())}), tmp_path / "set.parquet")
    explain_collection(model, tmp_path / "set.parquet", "raw-attention", tmp_path / "out", target="circle")
    rows = read_rows(tmp_path / "out").sort_by("key")
    circle = model.config.class_names.index("circle")
    assert rows.column("target").to_pylist() == [circle, 2, 0]
    assert rows.column("label").to_pylist() == [c for _, c in written]
    assert rows.column("target_name").to_pylist() == [model.config.class_names[t] for t in (circle, 2, 0)]


def test_corrupt_files_land_in_the_errors_and_the_rest_is_explained(tmp_path, model):
    write_shapes(tmp_path / "imgs", 5)
    (tmp_path / "imgs" / "garbage.png").write_bytes(os.urandom(300))
    whole = (tmp_path / "imgs" / "img_004.png").read_bytes()
    (tmp_path / "imgs" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    Image.fromarray(np.full((64, 64), 200.0, np.float32), mode="F").save(tmp_path / "imgs" / "levels.tif")
    counts = explain_collection(model, tmp_path / "imgs", METHODS, tmp_path / "out", batch_size=3)
    assert counts == {"done": 10, "skipped": 0, "errors": 3}
    errors = {row["key"]: row for row in read_errors(tmp_path / "out").to_pylist()}
    assert sorted(errors) == ["garbage.png", "levels.tif", "truncated.png"]
    assert "values up to 200" in errors["levels.tif"]["reason"]
    assert "cannot identify image file" in errors["garbage.png"]["reason"]
    assert "truncated" in errors["truncated.png"]["reason"] and errors["truncated.png"]["method"] is None
    assert sorted(set(read_rows(tmp_path / "out").column("key").to_pylist())) == [f"img_{i:03d}.png" for i in range(5)]


def cli(*args: str) -> list[str]:
    return ["explain", *args, "--model", "shapes-vit", "--method", METHODS]


def test_resume_after_a_killed_run_gives_an_uninterrupted_runs_rows(tmp_path, model):
    write_shapes(tmp_path / "imgs", 80)
    command = [sys.executable, "-m", "vitx.cli", *cli(str(tmp_path / "imgs"), "--out", str(tmp_path / "killed"),
                                                      "--rows-per-part", "8", "--batch-size", "4")]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows_dir, deadline = tmp_path / "killed" / "rows", time.monotonic() + 120
    while run.poll() is None and time.monotonic() < deadline and not (rows_dir.is_dir() and
                                                                       any(rows_dir.glob("part-*.parquet"))):
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait(30)
    partial = read_rows(tmp_path / "killed").num_rows
    assert 0 < partial < 160, "the run was not killed mid-way"
    assert not read_manifest(tmp_path / "killed")["shards"]["0/1"]["complete"]
    assert main(cli(str(tmp_path / "imgs"), "--out", str(tmp_path / "killed"), "--rows-per-part", "8")) == 0
    explain_collection(model, tmp_path / "imgs", METHODS, tmp_path / "whole")
    resumed, whole = read_rows(tmp_path / "killed"), read_rows(tmp_path / "whole")
    assert resumed.num_rows == whole.num_rows == 160
    assert max(Counter(zip(resumed.column("key").to_pylist(), resumed.column("method").to_pylist())).values()) == 1
    a, b = by_pair(resumed), by_pair(whole)
    assert a.keys() == b.keys()
    for pair, i in a.items():
        assert np.allclose(row_array(resumed, i), row_array(whole, b[pair]), atol=1e-5)
        assert resumed.column("target")[i].as_py() == whole.column("target")[b[pair]].as_py()
    assert read_manifest(tmp_path / "killed")["shards"]["0/1"]["complete"]
    assert not list((tmp_path / "killed").rglob(".tmp-*"))


def test_shards_run_apart_merge_into_the_whole(tmp_path, capsys):
    write_shapes(tmp_path / "imgs", 10)
    for k in range(3):
        assert main(cli(str(tmp_path / "imgs"), "--out", str(tmp_path / "out"), "--shard", f"{k}/3")) == 0
    assert main(["merge", str(tmp_path / "out"), "--out", str(tmp_path / "all.parquet")]) == 0
    merged = pq.read_table(tmp_path / "all.parquet")
    assert merged.num_rows == 20 and len(by_pair(merged)) == 20
    assert sorted(set(merged.column("key").to_pylist())) == [f"img_{i:03d}.png" for i in range(10)]
    assert sorted(read_manifest(tmp_path / "out")["shards"]) == ["0/3", "1/3", "2/3"]
    assert "20 rows (10 images), 0 errors" in capsys.readouterr().out


@pytest.mark.parametrize("spec, extra, words", [
    ("missing", [], "the collection '{tmp}/missing' does not exist"),
    ("nopath.parquet", [], "has no 'path' column (its columns: file)"),
    ("imgs", ["--shard", "2"], "--shard must be K/N"),
    ("imgs", ["--shard", "3/3"], "K must be at least 0 and less than N"),
    ("imgs", ["--shard", "0/0"], "N must be at least 1"),
    ("imgs", ["--method", "no-such-method"], "no-such-method"),
    ("imgs", ["--target", "hexagon"], "hexagon"),
    ("imgs", ["--text", "what?"], "--text is for image files"),
    ("imgs", ["--actors", "2"], "--ray-address and --actors are for --engine ray"),
])
def test_bad_command_lines_are_refused_before_out_exists(tmp_path, capsys, spec, extra, words):
    write_shapes(tmp_path / "imgs", 2)
    pq.write_table(pa.table({"file": ["imgs/img_000.png"]}), tmp_path / "nopath.parquet")
    args = cli(str(tmp_path / spec), "--out", str(tmp_path / "out"))
    if "--method" in extra:
        args = args[:-2]
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitx: error: ") and "\n" not in err and words.format(tmp=tmp_path) in err
    assert not (tmp_path / "out").exists()


def test_image_files_keep_todays_behaviour_and_refuse_collection_options(tmp_path, capsys):
    write_shapes(tmp_path / "imgs", 2)
    images = [str(tmp_path / "imgs" / f"img_00{i}.png") for i in range(2)]
    assert main(cli(*images, "--out", str(tmp_path / "files"), "--shard", "0/2")) == 2
    assert "--shard is for a collection" in capsys.readouterr().err and not (tmp_path / "files").exists()
    assert main(cli(*images, "--out", str(tmp_path / "files"))) == 0
    assert (tmp_path / "files" / "img_000_rollout.npy").is_file() and not (tmp_path / "files" / "rows").exists()


@pytest.mark.parametrize("extra, words", [([], "holds no collection run"), (["--out", "x.csv"], "must be a .parquet")])
def test_merge_refuses_a_folder_without_a_run_and_a_table_not_parquet(tmp_path, capsys, extra, words):
    assert main(["merge", str(tmp_path), *extra]) == 2
    assert words in capsys.readouterr().err


def test_a_key_listed_twice_is_explained_once_and_a_bad_target_is_an_error_row(tmp_path, model):
    write_shapes(tmp_path / "imgs", 3)
    (tmp_path / "list.txt").write_text("imgs/img_000.png\nimgs/img_001.png\nimgs/img_000.png\n")
    assert explain_collection(model, tmp_path / "list.txt", "rollout", tmp_path / "a")["done"] == 2
    assert sorted(read_rows(tmp_path / "a").column("key").to_pylist()) == ["imgs/img_000.png", "imgs/img_001.png"]
    pq.write_table(pa.table({"path": ["imgs/img_000.png", "imgs/img_001.png"], "target": [1, 99]}),
                   tmp_path / "set.parquet")
    counts = explain_collection(model, tmp_path / "set.parquet", "rollout", tmp_path / "b")
    assert counts == {"done": 1, "skipped": 0, "errors": 1}
    assert read_errors(tmp_path / "b").to_pylist() == [{
        "key": "imgs/img_001.png", "path": str(tmp_path / "imgs/img_001.png"), "method": None,
        "reason": f"target 99 is out of range: this model has {model.config.num_classes} classes "
                  f"(0-{model.config.num_classes - 1})"}]
    assert read_rows(tmp_path / "b").column("target").to_pylist() == [1]
