"""Seconds per image of vitx's attention-flow beside networkx's max-flow on the same graph.

    python benchmarks/attention_flow.py                       # ViT-S/16 (197 tokens, 12 blocks), random weights
    python benchmarks/attention_flow.py --images 1 --sinks 2 --threads 1

vitx: the whole ``vitx.explain(model, x, "attention-flow")`` call (one batched forward, then one exact
max-flow per patch with scipy's Dinic), divided by the number of images. networkx: Abnar & Zuidema's
construction (a DiGraph over every (layer, token) node, capacities Â_b from the same forward) for the
first image, and ``networkx.maximum_flow_value`` (its default, preflow-push; their code used the slower
Edmonds-Karp) for the first ``--sinks`` patches only; its seconds per image are the graph build plus the
mean seconds per sink times the number of patches: an extrapolation. Both run in this one process, so
their ratio compares like with like; the script also prints how far apart the two flows are.
"""
from __future__ import annotations

import argparse
import time

import networkx as nx
import numpy as np
import torch

import vitx
from vitx.methods.attention import residual_attentions
from vitx.models import create_model


def networkx_graph(mixed: np.ndarray) -> nx.DiGraph:
    """Abnar & Zuidema's layered graph: nodes (b, i) for layers 0..K, edges (b+1, i) -> (b, k) of capacity
    mixed[b][i, k]."""
    K, N, _ = mixed.shape
    graph = nx.DiGraph()
    for b in range(K):
        rows, cols = np.nonzero(mixed[b])
        graph.add_edges_from(((b + 1, i), (b, k), {"capacity": float(mixed[b][i, k])}) for i, k in zip(rows, cols))
    return graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_small_patch16_224")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--sinks", type=int, default=3, help="patches networkx solves (it is extrapolated to all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    model = vitx.load_model(create_model(args.arch).eval())
    size = model.config.image_size
    x = torch.randn(args.images, 3, *size, generator=torch.Generator().manual_seed(args.seed))
    layout = model.layout(x)
    print(f"{args.arch}, random weights: {layout.num_tokens} tokens, {layout.num_patches} patches, "
          f"{len(model.adapter.blocks())} blocks, {args.images} images, torch threads {torch.get_num_threads()}")

    start = time.perf_counter()
    exp = vitx.explain(model, x, "attention-flow", normalize=False)
    ours = (time.perf_counter() - start) / args.images

    with torch.no_grad(), vitx.trace(model, tokens=False) as tr:
        model(x[:1])
    mixed = torch.stack(residual_attentions(tr.attentions, keep=layout.cls_index), 1)[0].double().numpy()
    start = time.perf_counter()
    graph = networkx_graph(mixed)
    build = time.perf_counter() - start
    top, sinks = len(mixed), np.arange(layout.num_tokens)[layout.patches][:args.sinks]
    flows, seconds = [], []
    for j in sinks:
        start = time.perf_counter()
        flows.append(nx.maximum_flow_value(graph, (top, layout.cls_index), (0, int(j))))
        seconds.append(time.perf_counter() - start)
    theirs = build + np.mean(seconds) * layout.num_patches
    gap = np.abs(np.array(flows) - exp.token_maps[0].flatten()[:args.sinks].double().numpy()).max()

    print(f"vitx attention-flow   {ours:8.2f} s/image (measured, {args.images} images)")
    print(f"networkx max-flow     {theirs:8.2f} s/image (graph build {build:.2f} s + {np.mean(seconds):.2f} s/sink "
          f"x {layout.num_patches} patches, from {len(sinks)} sinks)")
    print(f"ratio networkx/vitx   {theirs / ours:8.1f}x")
    print(f"largest |vitx - networkx| flow on those sinks: {gap:.1e} (flows {np.round(flows, 6).tolist()})")


if __name__ == "__main__":
    main()
