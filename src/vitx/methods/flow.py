"""Attention flow (Abnar & Zuidema, ACL 2020): the class token's relevance for patch j is the maximum flow
from the class token at the top of the layered attention graph to token j at its bottom.

The graph has one node per (layer, token), layers 0..L; token i of layer b+1 sends to token k of layer b
an edge of capacity Â_b[i, k], Â_b = norm_rows(fuse_h(A_b) + I) as in rollout. scipy's Dinic solver takes
integer capacities, so each solve floors the capacities scaled by 2^30/u, u a bound on the flow still
missing; it finds the missing flow up to (edges of positive capacity)/scale, and the next solve, on the
residual graph, looks for that remainder. Every returned flow is at most TOLERANCE below the exact maximum
flow of the float64 capacities (an a-priori bound, not a measurement), and never above it.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_flow

from ..batch import Batch
from ..memory import ATTENTION, graphs
from ..registry import register
from .attention import ABNAR_2020, residual_attentions

CAPACITY = 2 ** 30    # the largest integer capacity of a solve: scipy's capacities and flows are int32
TOLERANCE = 1e-6      # absolute error bound of every returned flow (flows are at most 1)


@register("attention-flow", family="attention", paper=ABNAR_2020, needs={"attention", "cls_token"},
          cost="1F + one max-flow per patch (CPU)", memory=graphs(ATTENTION))
def attention_flow(batch: Batch, head_fusion: str = "mean", discard_ratio: float = 0.0,
                   start_layer: int = 0) -> torch.Tensor:
    """Attention flow: R_j = maxflow((L, c) → (s, j)) in the graph whose edges from token i of layer b+1 to
    token k of layer b have capacity Â_b[i, k], Â_b = norm_rows(fuse_h(A_b) + I), blocks s..L; the graph of
    rollout, with flows in place of path products. Exact to 1e-6; the raw flows, not Abnar & Zuidema's
    division by their sum over input tokens (a per-image constant that min-max scaling removes)."""
    c = batch.layout.cls_index
    with torch.no_grad():
        _, tr = batch.run(tokens=False)
        mixed = torch.stack(residual_attentions(tr.attentions, head_fusion, discard_ratio, start_layer, keep=c), 1)
    sinks = np.arange(mixed.shape[-1])[batch.layout.patches]
    flows = [layered_max_flows(image, c, sinks) for image in mixed.double().cpu().numpy()]
    return batch.layout.to_grid(torch.tensor(np.stack(flows), dtype=mixed.dtype, device=mixed.device))


def layered_max_flows(mixed: np.ndarray, source: int, sinks, tolerance: float = TOLERANCE) -> np.ndarray:
    """Maximum flow from token ``source`` of the top layer to each token of ``sinks`` at the bottom, through
    the layered graph of ``mixed`` (K, N, N): row i of mixed[b] holds the capacities from token i of layer
    b+1 to the tokens of layer b. The graph is built once; each sink changes only the capacities into it."""
    graph, into_sink = layered_graph(mixed, source)
    flows = []
    for sink in sinks:
        graph.data[into_sink] = mixed[0][:, sink]
        flows.append(max_flow(graph, source, graph.shape[0] - 1, tolerance))
    return np.array(flows)


def layered_graph(mixed: np.ndarray, source: int) -> tuple[csr_array, np.ndarray]:
    """The capacities as a CSR matrix over the nodes (layer b, token i) = (K − b)·N + i of layers K..1 and a
    last node for the sink (a token of layer 0), which every token of layer 1 has one edge into; returns it
    and the positions of those edges in its data, whose capacities depend on the sink. The top layer's
    tokens other than ``source`` receive no flow: their edges are left at capacity 0, which solves drop."""
    K, N, _ = mixed.shape
    sink = K * N
    outgoing = mixed[::-1].copy()                   # outgoing[q]: capacities out of layer K − q
    outgoing[0] *= np.arange(N)[:, None] == source
    dense = (K - 1) * N                             # rows of layers K..2, N edges each
    indptr = np.concatenate([np.arange(dense + 1) * N, dense * N + np.arange(1, N + 1), [dense * N + N]])
    indices = np.concatenate([((np.arange(dense) // N + 1) * N)[:, None] + np.arange(N), np.full((1, N), sink)],
                             axis=None)
    data = np.concatenate([outgoing[:-1].ravel(), np.zeros(N)])
    graph = csr_array((data, indices.astype(np.int32), indptr.astype(np.int32)), shape=(sink + 1, sink + 1))
    return graph, indptr[dense:dense + N]


def max_flow(graph: csr_array, source: int, sink: int, tolerance: float = TOLERANCE) -> float:
    """Maximum flow of real capacities, within ``tolerance``, by integer solves on the residual graph.

    Each solve clips the capacities at u, a bound on the flow still missing (so no maximum flow is cut),
    and floors them scaled by 2^30/u: the flow it finds falls short of the missing flow by less than one
    unit per edge, (edges of positive capacity)/scale, the next u."""
    upper = min(graph[[source]].sum(), graph.data[graph.indices == sink].sum())  # cuts around source and sink
    total, bound, residual = 0.0, upper, graph
    while bound > tolerance:
        scale = CAPACITY / bound
        ints = residual.copy()
        ints.data = np.floor(np.minimum(ints.data, bound) * scale).astype(np.int32)
        ints.eliminate_zeros()
        result = maximum_flow(ints, source, sink)
        total += result.flow_value / scale
        missed = residual.nnz / scale
        residual = (residual - result.flow / scale).tocsr()
        residual.data = np.maximum(residual.data, 0.0)
        residual.eliminate_zeros()
        bound = min(missed, upper - total)
    return total
