"""eX-ViT's class maps and attribute maps beside Chefer's generic attention on shapes-vit (docs/inherent.md).

    python studies/exvit_maps.py docs/inherent/exvit_class_maps.png

Six fresh images (data seed 20,000, the quality gates' first six), each explained for its true class: the image with
its object mask outlined, the ex-vit class map, its attribute maps (details["attribute_maps"]), and generic-attention
on shapes-vit; every map min-max scaled on its own.
"""
from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import vitx  # noqa: E402
from vitx.data import shapes  # noqa: E402


def main(out: str, n: int = 6) -> None:
    data = shapes(n=n, seed=20_000)
    exvit, vit = vitx.load_model("shapes-vit-exvit"), vitx.load_model("shapes-vit")
    ours = vitx.explain(exvit, exvit.normalize(data.images), method="ex-vit", target=data.labels)
    theirs = vitx.explain(vit, vit.normalize(data.images), method="generic-attention", target=data.labels)
    attributes = [[F.interpolate(m.new_tensor(a)[None, None], size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
                   for a in image] for image, m in zip(ours.details["attribute_maps"], ours.maps)]
    columns = ["image and mask", "ex-vit class map", *(f"attribute {k + 1}" for k in range(len(attributes[0]))),
               "generic-attention (shapes-vit)"]
    fig, axes = plt.subplots(n, len(columns), figsize=(1.6 * len(columns), 1.6 * n))
    for i in range(n):
        panels = [None, ours.maps[i], *attributes[i], theirs.maps[i]]
        for j, (ax, panel) in enumerate(zip(axes[i], panels)):
            ax.imshow(data.images[i].permute(1, 2, 0).clamp(0, 1))
            if panel is None:
                ax.contour(data.masks[i].float(), levels=[0.5], colors="white", linewidths=0.8)
            else:
                ax.imshow(panel.detach(), cmap="jet", alpha=0.5)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=7)
        axes[i][0].set_ylabel(data.class_names[int(data.labels[i])], fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=72)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    main(parser.parse_args().out)
