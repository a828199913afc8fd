"""The Ray engine on a local cluster bound to 127.0.0.1 (started once for the module): the same rows as the in-process
engine, corrupt files in the errors table, resume, and the refusals (unreachable address, Ray missing)."""
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from vitx.data.shapes import shapes  # noqa: E402
from vitx.engines import read_errors, read_rows  # noqa: E402
from vitx.engines.local import explain_collection  # noqa: E402
from vitx.engines.ray_engine import actor_cpus, explain_dataset, run_ray  # noqa: E402
from vitx.errors import VitxError  # noqa: E402

METHODS = ["raw-attention", "generic-attention"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, logging_level="WARNING")   # "local": a new cluster, whatever `ray start` left
    yield
    ray.shutdown()


def write_images(folder, n, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    data = shapes(n, seed=seed)
    for i in range(n):
        pixels = (data.images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return folder


def by_pair(table):
    return {(row["key"], row["method"]): row for row in table.to_pylist()}


def test_same_rows_as_in_process_and_corrupt_file_logged(cluster, tmp_path):
    images = write_images(tmp_path / "images", 64)
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    local = explain_collection("shapes-vit", str(images), METHODS, tmp_path / "local")
    counts = run_ray(str(images), "shapes-vit", METHODS, tmp_path / "ray", batch_size=16)
    assert counts == local == {"done": 128, "skipped": 0, "errors": 1}
    expected, got = by_pair(read_rows(tmp_path / "local")), by_pair(read_rows(tmp_path / "ray"))
    assert set(got) == set(expected) and len(got) == 128
    for pair, row in expected.items():
        assert got[pair]["target"] == row["target"] and got[pair]["params"] == row["params"]
        assert got[pair]["map_shape"] == row["map_shape"] == [64, 64]
        np.testing.assert_allclose(got[pair]["map"], row["map"], atol=1e-5)
        np.testing.assert_allclose(got[pair]["token_map"], row["token_map"], atol=1e-5)
        np.testing.assert_allclose(got[pair]["logits"], row["logits"], atol=1e-4)
    errors = read_errors(tmp_path / "ray").to_pylist()
    assert [(e["key"], e["method"]) for e in errors] == [("corrupt.png", None)]
    assert errors == read_errors(tmp_path / "local").to_pylist()


def test_resume_redoes_only_what_is_missing_also_from_the_command_line(cluster, tmp_path, capsys):
    from vitx.cli import main
    images = write_images(tmp_path / "images", 8, seed=1)
    out = tmp_path / "out"
    assert run_ray(str(images), "shapes-vit", METHODS, out, rows_per_part=5) == {"done": 16, "skipped": 0,
                                                                                "errors": 0}
    whole = by_pair(read_rows(out))
    lost = sorted((out / "rows").glob("part-*.parquet"))[1]   # a part a crash would not have flushed
    lost_pairs = set(by_pair(pq.read_table(lost)))
    lost.unlink()
    assert main(["explain", str(images), "--model", "shapes-vit", "--method", ",".join(METHODS), "--out", str(out),
                 "--engine", "ray", "--overlays"]) == 0
    assert f"{len(lost_pairs)} rows written, {16 - len(lost_pairs)} already done" in capsys.readouterr().out
    again = by_pair(read_rows(out))
    assert set(again) == set(whole) and len(read_rows(out)) == 16
    for pair in lost_pairs:
        np.testing.assert_allclose(again[pair]["map"], whole[pair]["map"], atol=1e-5)
    overlays = sorted(p.name for p in (out / "overlays").iterdir())   # drawn by the actors for the redone rows
    assert overlays == sorted(f"{key[:-4]}_{method}.png" for key, method in lost_pairs)
    assert Image.open(out / "overlays" / overlays[0]).size[0] >= 256
    assert run_ray(str(images), "shapes-vit", METHODS, out) == {"done": 0, "skipped": 16, "errors": 0}


def test_explain_dataset_gives_error_rows_not_failed_blocks(cluster, tmp_path):
    images = write_images(tmp_path / "images", 3, seed=2)
    items = [{"bytes": f.read_bytes(), "path": str(f), "key": f.name, "label": "circle", "target": target}
             for f, target in zip(sorted(images.iterdir()), (None, 2, 99))]
    items.append({"bytes": b"GIF89a broken", "path": "broken.gif", "key": "broken.gif", "label": None,
                  "target": None})
    table = explain_dataset(ray.data.from_items(items), "shapes-vit", ["raw-attention"], batch_size=4).take_all()
    good = {row["key"]: row for row in table if row["error"] is None}
    bad = {row["key"]: row for row in table if row["error"] is not None}
    assert sorted(good) == ["000.png", "001.png"] and sorted(bad) == ["002.png", "broken.gif"]
    assert good["001.png"]["target"] == 2 and good["000.png"]["label"] == "circle"
    assert [bad[key]["method"] for key in bad] == [None, None] and bad["broken.gif"]["map"] is None
    assert "broken.gif" in bad["broken.gif"]["error"] and "target 99 is out of range" in bad["002.png"]["error"]


def test_unreachable_address_is_refused_quickly_with_the_address(tmp_path):
    images = write_images(tmp_path / "images", 1)
    start = time.monotonic()
    with pytest.raises(VitxError, match=r"127\.0\.0\.1:1") as caught:
        run_ray(str(images), "shapes-vit", METHODS, tmp_path / "out", address="127.0.0.1:1")
    assert time.monotonic() - start < 10 and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_missing_ray_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(VitxError, match=r"pip install 'vitx\[ray\]'"):
        run_ray(str(tmp_path), "shapes-vit", METHODS, tmp_path / "out")


def test_actors_leave_cpus_to_the_reads():
    assert actor_cpus(2, 1) == 1.0
    assert actor_cpus(16, 4) == 1.0
    assert actor_cpus(4, 6) * 6 <= 3
    assert 0 < actor_cpus(1, 1) < 1


def test_all_methods_are_those_that_apply_to_the_model():
    import vitx
    from vitx.registry import refusals
    names = [name for name, why in refusals(vitx.load_model("shapes-vit")).items() if why is None]
    assert {"raw-attention", "generic-attention", "rollout"} <= set(names)
    assert not {"nest-cam", "gradcat", "hvt-pooling", "ex-vit"} & set(names)   # other architectures' methods


def test_command_line_unreachable_address_is_one_line_before_out(tmp_path, capsys):
    from vitx.cli import main
    images = write_images(tmp_path / "images", 1)
    code = main(["explain", str(images), "--model", "shapes-vit", "--method", "raw-attention", "--out",
                 str(tmp_path / "out"), "--engine", "ray", "--ray-address", "127.0.0.1:1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("vitx: error: cannot reach the Ray cluster at '127.0.0.1:1'")
    assert "\n" not in err and not (tmp_path / "out").exists()


def test_explain_dataset_refuses_an_unknown_method_before_running():
    with pytest.raises(VitxError, match="unknown method 'no-such-method'"):
        explain_dataset(None, "shapes-vit", "raw-attention,no-such-method")


def test_a_cluster_wanting_a_token_is_told_in_one_line():
    from vitx.engines.ray_engine import connect_failure

    class AuthenticationError(Exception):
        pass

    try:
        try:
            raise AuthenticationError("RPC error: InvalidAuthToken")
        except AuthenticationError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6379") from cause
    except ConnectionError as err:
        message = connect_failure("10.0.0.5:6379", err)
    assert "'10.0.0.5:6379'" in message and "RAY_AUTH_MODE=token" in message
    assert connect_failure("h:1", ConnectionError("no\nroute")) == "cannot connect to the Ray cluster at 'h:1' (no route)"
