"""Collections (folder, glob, list, Parquet table), shards and the store's layout: every spec form read and
streamed, each bad spec refused in one line before any work, every image in exactly one shard."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vitx.engines import Store, open_collection, parse_shard, read_errors, read_manifest, read_rows, row_array
from vitx.engines.shards import in_shard
from vitx.errors import VitxError

from collections_support import write_shapes


def keys(collection, shard=(0, 1)):
    return [item.key for item in collection.items(shard)]


def test_folder_is_recursive_sorted_and_keeps_only_images(tmp_path):
    write_shapes(tmp_path / "b", 2)
    write_shapes(tmp_path / "a" / "deep", 1)
    (tmp_path / "notes.md").write_text("not an image")
    collection = open_collection(tmp_path)
    assert keys(collection) == ["a/deep/img_000.png", "b/img_000.png", "b/img_001.png"]
    assert len(collection) == 3
    assert [item.path for item in collection.items()][0] == str(tmp_path / "a/deep/img_000.png")


def test_glob_keys_are_relative_to_its_fixed_folders(tmp_path):
    write_shapes(tmp_path / "x", 3)
    collection = open_collection(f"{tmp_path}/x/img_00[02].png")
    assert keys(collection) == ["img_000.png", "img_002.png"]
    assert keys(open_collection(f"{tmp_path}/**/*.png")) == ["x/img_000.png", "x/img_001.png", "x/img_002.png"]


def test_list_skips_blank_and_comment_lines_and_resolves_beside_itself(tmp_path):
    write_shapes(tmp_path / "imgs", 3)
    listing = tmp_path / "some.txt"
    listing.write_text("# a comment\nimgs/img_002.png\n\n  imgs/img_000.png  \n")
    collection = open_collection(listing)
    assert keys(collection) == ["imgs/img_002.png", "imgs/img_000.png"]
    assert [item.path for item in collection.items()] == [str(tmp_path / "imgs/img_002.png"),
                                                         str(tmp_path / "imgs/img_000.png")]


def test_parquet_table_streams_label_target_and_mask(tmp_path, monkeypatch):
    written = write_shapes(tmp_path / "imgs", 5, masks=True)
    table = pa.table({"path": [f"imgs/{name}" for name, _ in written], "label": [label for _, label in written],
                      "target": pa.array([1, None, 2, 0, 3], pa.int64()),
                      "mask": [f"imgs/mask_{i:03d}.png" for i in range(5)]})
    pq.write_table(table, tmp_path / "set.parquet", row_group_size=2)
    monkeypatch.setattr("vitx.engines.collection.BATCH_ROWS", 2)   # read in batches of 2: streamed, never whole
    read = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("the table was read whole"))
    collection = open_collection(tmp_path / "set.parquet")
    assert collection.size == 5
    items = list(collection.items())
    assert [item.key for item in items] == [f"imgs/{name}" for name, _ in written]
    assert [item.label for item in items] == [label for _, label in written]
    assert [item.target for item in items] == [1, None, 2, 0, 3]
    assert items[4].mask == str(tmp_path / "imgs/mask_004.png") and items[0].path == str(tmp_path / "imgs/img_000.png")
    monkeypatch.setattr(pq, "read_table", read)


@pytest.mark.parametrize("spec, words", [
    ("missing_folder", "does not exist"), ("nothing*.png", "matches no file"), ("absent.parquet", "does not exist"),
    ("empty", "holds no image file"), ("nopath.parquet", "no 'path' column (its columns: file, label)"),
    ("junk.parquet", "cannot read"), ("notes.md", "is not a folder, a glob"),
])
def test_bad_specs_are_refused_in_one_line(tmp_path, spec, words):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    pq.write_table(pa.table({"file": ["a.png"], "label": ["x"]}), tmp_path / "nopath.parquet")
    with pytest.raises(VitxError, match="collection|folder|table|cannot read") as err:
        open_collection(tmp_path / spec)
    assert words in str(err.value) and "\n" not in str(err.value)
    if spec in ("missing_folder", "nopath.parquet"):
        assert str(tmp_path / spec) in str(err.value)


@pytest.mark.parametrize("text", ["1", "3/3", "-1/2", "a/b", "1/0", "2/1/3", ""])
def test_shard_of_a_wrong_form_is_refused(text):
    with pytest.raises(VitxError, match="--shard"):
        parse_shard(text)


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1) and parse_shard("6/7") == (6, 7)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shards_cover_every_key_exactly_once(n):
    keys = [f"folder/image_{i}.jpg" for i in range(50)]
    owners = Counter(key for k in range(n) for key in keys if in_shard(key, k, n))
    assert sorted(owners) == sorted(keys) and set(owners.values()) == {1}
    if n > 1:   # a real split, not everything in one shard
        assert max(sum(in_shard(key, k, n) for key in keys) for k in range(n)) < 50


def test_collection_shards_partition_the_items_and_are_stable_as_it_grows(tmp_path):
    write_shapes(tmp_path, 12)
    collection = open_collection(tmp_path)
    parts = [keys(collection, (k, 3)) for k in range(3)]
    assert sorted(sum(parts, [])) == keys(collection)
    write_shapes(tmp_path / "more", 4)
    grown = open_collection(tmp_path)
    for k in range(3):   # the old keys stay in their shard
        assert set(parts[k]) <= set(keys(grown, (k, 3)))


def row(key, method="m", value=0.0):
    return {"key": key, "path": f"/p/{key}", "method": method, "params": "{}", "target": 1, "target_name": "a",
            "label": None, "logits": np.ones(3, np.float32), "token_map": np.full(4, value, np.float32),
            "token_shape": np.array([2, 2], np.int32), "map": np.arange(6, dtype=np.float32) + value,
            "map_shape": np.array([2, 3], np.int32)}


def test_store_writes_parts_atomically_and_its_manifest_counts_them(tmp_path):
    store = Store(tmp_path, (1, 2), rows_per_part=2)
    for i in range(3):
        store.add(row(f"k{i}"))
    assert [f.name for f in (tmp_path / "rows").iterdir()] == ["part-1of2-00000.parquet"]   # a full part at once
    store.error("bad.png", "/p/bad.png", None, "cannot read")
    store.finish()
    other = Store(tmp_path, (0, 2), rows_per_part=2)
    other.add(row("k9", "n"))
    other.flush()
    manifest = read_manifest(tmp_path)["shards"]
    assert manifest["1/2"]["rows"] == 3 and manifest["1/2"]["errors"] == 1 and manifest["1/2"]["complete"]
    assert manifest["0/2"]["rows"] == 1 and not manifest["0/2"]["complete"]
    assert not list(tmp_path.rglob(".tmp-*"))
    rows = read_rows(tmp_path)
    assert sorted(rows.column("key").to_pylist()) == ["k0", "k1", "k2", "k9"]
    assert row_array(rows, 0).shape == (2, 3) and row_array(rows, 0, "token_map").shape == (2, 2)
    assert Store(tmp_path, (0, 2)).done() == {("k0", "m"), ("k1", "m"), ("k2", "m"), ("k9", "n")}
    assert read_errors(tmp_path).to_pylist() == [{"key": "bad.png", "path": "/p/bad.png", "method": None,
                                                  "reason": "cannot read"}]


def test_a_rerun_continues_the_part_numbers_and_drops_fixed_errors(tmp_path):
    store = Store(tmp_path, rows_per_part=5)
    store.error("k1", "/p/k1", "m", "broken")
    store.finish()
    (tmp_path / "rows" / ".tmp-part-0of1-00007.parquet").write_bytes(b"half a file")   # a killed write
    again = Store(tmp_path, rows_per_part=5)
    assert not (tmp_path / "rows" / ".tmp-part-0of1-00007.parquet").exists()
    again.add(row("k1"))
    again.finish()
    assert sorted(f.name for f in (tmp_path / "rows").iterdir()) == ["part-0of1-00001.parquet"]
    assert read_errors(tmp_path).num_rows == 0 and read_rows(tmp_path).num_rows == 1


def test_reading_a_folder_without_a_run_is_refused(tmp_path):
    with pytest.raises(VitxError, match="holds no collection run"):
        read_rows(tmp_path)
