"""Where NesT's tree explanations point on shapes: GradCAT's leaf block, nest-cam, and each level's score map.

    python studies/nest_localisation.py --models shapes-nest out/nest-fine/shapes-nest-fine.safetensors

For each model (zoo name or file) on ``--n`` fresh single-object images (data seed 20,000, as in
``tests/test_quality.py``), for the true class: test accuracy; the share of images whose GradCAT leaf block
overlaps the object; the strict pointing game of ``gradcat`` (its peak is the leaf block) and of ``nest-cam``;
and the strict pointing game of the peak of each level's GradCAT score map h_l (``vitx.methods.nest.level_scores``),
with GradCAT's sign and with the opposite one, which says at which level the tree still knows where the object
is; and nest-cam's mean value (the logit's share per position) on and off the object. Prints a markdown table.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import vitx
from vitx.batch import Batch
from vitx.data import shapes
from vitx.methods.nest import level_scores
from vitx.metrics import pointing_game


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), each value repeated over the pixels it covers."""
    return F.interpolate(maps[:, None].float(), size=size, mode="nearest")[:, 0]


def localisation(model, n: int, batch_size: int) -> dict[str, float | list[float]]:
    data = shapes(n=n, seed=20_000, variant="single")
    x, size = model.preprocess(data.images), tuple(data.images.shape[-2:])
    row = {}
    with torch.no_grad():
        row["accuracy"] = (model(x).argmax(-1) == data.labels).float().mean().item()
    gradcat = vitx.explain(model, x, "gradcat", target=data.labels, batch_size=batch_size)
    leaf = upsample(gradcat.token_maps == gradcat.token_maps.amax((1, 2), keepdim=True), size).bool()
    row["GradCAT leaf overlaps the object"] = (leaf & data.masks).flatten(1).any(1).float().mean().item()
    row["pointing, gradcat"] = pointing_game(gradcat.maps, data.masks).mean().item()
    cam = vitx.explain(model, x, "nest-cam", target=data.labels, batch_size=batch_size, normalize=False)
    row["pointing, nest-cam"] = pointing_game(cam.maps, data.masks).mean().item()
    on, off = ((cam.maps * m).flatten(1).sum(1) / m.flatten(1).sum(1) for m in (data.masks, ~data.masks))
    row["nest-cam's mean on / off the object"] = [on.mean().item(), off.mean().item()]
    row["share of images where nest-cam is lower on the object"] = (on < off).float().mean().item()
    heat = [[] for _ in model.config.levels]
    for start in range(0, n, batch_size):
        chunk = x[start:start + batch_size]
        for level, h in enumerate(level_scores(Batch(model, chunk, model.layout(chunk),
                                                     data.labels[start:start + batch_size]))[0]):
            heat[level].append(h)
    for level, maps in enumerate(heat):
        h = upsample(torch.cat(maps), size)
        row[f"pointing, peak of h_{level}, GradCAT's sign / opposite"] = [
            pointing_game(sign * h, data.masks).mean().item() for sign in (1, -1)]
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["shapes-nest"])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = {name: localisation(vitx.load_model(name), args.n, args.batch_size) for name in args.models}
    print("| measure | " + " | ".join(f"`{name}`" for name in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for key in dict.fromkeys(key for row in rows.values() for key in row):
        cells = [row.get(key) for row in rows.values()]
        print(f"| {key} | " + " | ".join("" if c is None else " / ".join(f"{v:.3f}" for v in c) if isinstance(c, list)
                                         else f"{c:.3f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
