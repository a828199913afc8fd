"""ViT-NeT's explanation (Kim et al., ICML 2022): the hard path through its neural tree decoder, with each node's
prototype (the training patch it was projected to) and its similarity map on the input (:mod:`vitx.models.vitnet`)."""
from __future__ import annotations

from functools import lru_cache

import torch

from ...batch import Batch
from ...data import shapes
from ...errors import VitxError
from ...models.vitnet import ViTNeT
from ...registry import register

KIM_2022 = "Kim et al., ICML 2022, ViT-NeT: Interpretable Vision Transformers with Neural Tree Decoder"


def tree_of(model) -> ViTNeT:
    """The ViT-NeT network of a loaded model, or a VitxError for a model without a tree."""
    net = getattr(model, "net", None)
    if not isinstance(net, ViTNeT):
        raise VitxError(f"method 'vit-net' explains the neural tree decoder of a ViT-NeT, and this model "
                        f"({type(net).__name__}) has no tree: load one such as 'shapes-vit-net'")
    return net


def path_details(out, net: ViTNeT, targets: torch.Tensor, grid: tuple[int, int]) -> list[dict]:
    """Per image: the hard path's nodes (node, depth, branch taken, p^L, the prototype's source, the input patch most
    like the prototype and its similarity), the leaf and its probability of the target."""
    sources = net.tree.prototype_source.tolist()
    images = []
    for b in range(len(targets)):
        nodes = []
        for depth, node in enumerate(out.path[b].tolist()):
            patch = int(out.similarity[b, node].argmax())
            seed, image, source = sources[node]
            nodes.append({"node": node, "depth": depth, "branch": "left" if out.left[b, node] > 0.5 else "right",
                          "p_left": float(out.left[b, node]),
                          "prototype": {"data_seed": seed, "image": image, "patch": source,
                                        "position": (source // grid[1], source % grid[1]) if source >= 0 else None},
                          "nearest_patch": (patch // grid[1], patch % grid[1]),
                          "similarity": float(out.similarity[b, node, patch])})
        leaf = int(out.leaf[b])
        images.append({"nodes": nodes, "leaf": leaf, "leaf_probability": float(out.leaves[b, leaf, targets[b]])})
    return images


@lru_cache(maxsize=8)
def prototype_pixels(sources: tuple[tuple[int, int, int], ...], grid: tuple[int, int]) -> torch.Tensor:
    """The pixels (I, 3, p, p) of each prototype's training patch, redrawn from ``vitx.data.shapes`` (zeros for a
    prototype not projected)."""
    crops = []
    for seed, image, patch in sources:
        if seed < 0:
            crops.append(None)
            continue
        drawn = shapes(n=image + 1, seed=seed).images[image]
        ph, pw = drawn.shape[1] // grid[0], drawn.shape[2] // grid[1]
        row, col = divmod(patch, grid[1])
        crops.append(drawn[:, row * ph:(row + 1) * ph, col * pw:(col + 1) * pw])
    shape = next((c.shape for c in crops if c is not None), (3, 1, 1))
    return torch.stack([torch.zeros(shape) if c is None else c for c in crops])


@register("vit-net", family="inherent", paper=KIM_2022, cost="1F", fits=lambda model, params: tree_of(model),
          shows="the hard path through the tree (exp.details['path']: per node the branch taken, its prototype's "
                "training patch and the input patch most like it; exp.details['similarity']: the path's similarity "
                "maps; the figure <name>_vit-net_path.png); the map is their mean, each min-max scaled")
def vit_net(batch: Batch) -> torch.Tensor:
    """ViT-NeT's hard path: from the root, node i goes left where p_i^L = max_n exp(−‖z^i_n − p_i‖) > 1/2, down to
    a leaf whose class distribution is the prediction. The path does not depend on the target (the tree routes
    before any class is read); the target only picks the leaf probability reported. ``exp.details["path"]``: per
    image ``{"nodes": [...], "leaf", "leaf_probability"}``, each node with its branch, p^L, the prototype's training
    patch (data seed and image index of ``vitx.data.shapes(n, seed)``, patch index and (row, col)), the input patch
    most like it and that similarity; ``["similarity"]``: the path's maps s_i(n) (depth, gh, gw); ``["prototypes"]``:
    the pixels of the path's prototype patches (depth, 3, p, p), drawn by ``exp.save`` as ``<name>_vit-net_path.png``
    (:func:`vitx.viz.vitnet.tree_path`). The map is their
    mean after each is min-max scaled over the patches: each node decides on its best-matching patch alone (at 1
    after scaling), the floor of exp(−d) is a node's own and carries no place, and every decision counts once."""
    net = tree_of(batch.model)
    with torch.no_grad():
        out = net.decode(net.forward_features(batch.x))
        batch.record(net.logits(out))
    maps = out.similarity.gather(1, out.path[..., None].expand(-1, -1, out.similarity.shape[-1]))   # (B, D, N)
    grid = batch.layout.grid
    batch.details["path"] = path_details(out, net, batch.targets, grid)
    batch.details["similarity"] = list(batch.layout.to_grid(maps).cpu())
    pixels = prototype_pixels(tuple(map(tuple, net.tree.prototype_source.tolist())), grid)
    batch.details["prototypes"] = list(pixels[out.path.cpu()])
    low, high = maps.amin(-1, keepdim=True), maps.amax(-1, keepdim=True)
    return batch.layout.to_grid(((maps - low) / (high - low).clamp_min(1e-12)).mean(1))
