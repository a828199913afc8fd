"""vitx bench --collection --engine ray on a local cluster bound to 127.0.0.1: the same per-image scores as the
in-process engine, a corrupt image in the errors table, and a rerun that skips what is done."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from vitx.data import shapes  # noqa: E402
from vitx.engines import read_errors  # noqa: E402
from vitx.engines.ray_scoring import bench_ray  # noqa: E402
from vitx.engines.scores import read_scores  # noqa: E402
from vitx.engines.scoring import bench_collection  # noqa: E402

OPTIONS = {"metrics": ["pointing_game", "miou", "sparseness"], "batch_size": 4}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             logging_level="WARNING")
    yield
    ray.shutdown()


def scores_by_triple(out):
    return {(row["key"], row["method"], row["metric"]): row["value"] for row in read_scores(out).to_pylist()
            if row["metric"] != "seconds"}


def test_ray_scores_equal_the_in_process_scores(cluster, tmp_path):
    data = shapes(n=8, seed=5)
    rows = []
    for i in range(len(data)):
        pixels = (data.images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        Image.fromarray(data.masks[i].numpy().astype(np.uint8) * 255).save(tmp_path / f"{i}_mask.png")
        rows.append({"path": f"{i}.png", "label": int(data.labels[i]), "mask": f"{i}_mask.png"})
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rows.append({"path": "corrupt.png", "label": 0, "mask": "0_mask.png"})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "table.parquet")
    spec = str(tmp_path / "table.parquet")
    methods = ["raw-attention", "ground-truth"]
    local = bench_collection("shapes-vit", spec, methods, tmp_path / "local", **OPTIONS)
    remote = bench_ray("shapes-vit", spec, methods, tmp_path / "ray", **OPTIONS)
    assert remote == local == {"done": 16, "skipped": 0, "errors": 1}
    expected, got = scores_by_triple(tmp_path / "local"), scores_by_triple(tmp_path / "ray")
    assert set(got) == set(expected) and len(got) == 8 * 2 * 3
    np.testing.assert_allclose([got[k] for k in sorted(expected)], [expected[k] for k in sorted(expected)],
                               rtol=1e-5, atol=1e-6)
    errors = read_errors(tmp_path / "ray").to_pylist()
    assert [(e["key"], e["method"]) for e in errors] == [("corrupt.png", None)]
    assert errors[0]["reason"] == read_errors(tmp_path / "local").to_pylist()[0]["reason"]
    again = bench_ray("shapes-vit", spec, methods, tmp_path / "ray", **OPTIONS)
    assert again == {"done": 0, "skipped": 16, "errors": 1}
