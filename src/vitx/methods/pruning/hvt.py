"""HVT's pooling read as an explanation: which patches the max pooling between stages lets through to the tokens the
head reads (Pan et al., ICCV 2021). The map is of the model itself (an HVT, :mod:`vitx.models.hvt`), with no training
and no target: the pooling's choices do not depend on the class explained."""
from __future__ import annotations

import torch

from ...batch import Batch
from ...errors import VitxError
from ...registry import register

PAN_2021_HVT = "Pan et al., ICCV 2021, Scalable Vision Transformers with Hierarchical Pooling"


def pooling_trace(winners: list[torch.Tensor], lengths: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Trace the max poolings' winners down to the first stage's tokens.

    ``winners[p]`` (B, n_{p+1}, D): per output token j of pooling p and channel d, the input token w_p(j, d) whose
    value won (stage p has ``lengths[p]`` = n_p tokens). The share of output j that input i won is
    S_p[j, i] = #{d : w_p(j, d) = i} / D (each row sums to 1); its wins, c_p[i] = Σ_j S_p[j, i], count the outputs
    it won (0 to the number of windows that hold it). The trace starts at 1 on every token of the last stage (the head
    averages them) and passes each token's value down to the tokens that won it, by their shares:
    m_{P}[j] = 1, m_p[i] = Σ_j S_p[j, i] m_{p+1}[j]; so Σ_i m_p[i] = n_last at every stage.
    Returns m_0 (B, n_0) and the wins c_p (B, n_p) of every pooling, in order."""
    value, wins = torch.ones(winners[-1].shape[0], lengths[-1], device=winners[-1].device), []
    for p in reversed(range(len(winners))):
        won = winners[p]
        D = won.shape[-1]
        share = torch.full(won.shape, 1 / D, dtype=value.dtype, device=won.device)
        down = value.new_zeros(won.shape[0], lengths[p])
        wins.insert(0, down.clone().scatter_add_(1, won.flatten(1), share.flatten(1)))
        value = down.scatter_add_(1, won.flatten(1), (share * value[..., None]).flatten(1))
    return value, wins


def _one_pooling(model, params: dict) -> None:
    if len(model.config.levels) < 2:
        raise VitxError("method 'hvt-pooling' reads the max pooling between HVT's stages, and this HVT has one stage")


@register("hvt-pooling", family="pruning", paper=PAN_2021_HVT, cost="1F", kinds=("hvt",), fits=_one_pooling)
def hvt_pooling(batch: Batch) -> torch.Tensor:
    """HVT's pooling map: how much of the tokens the head reads each patch won through the 1-D max poolings between
    stages (:func:`pooling_trace`: at pooling p, S_p[j, i] = the share of channels of output token j whose maximum
    input i holds; m_last = 1; m_p[i] = Σ_j S_p[j, i] m_{p+1}[j]; the map is m_0 over the patches). It reads the
    pooling alone: attention mixes tokens inside each stage, which it does not trace; with no padding the last
    patch of an even sequence is in no window and scores 0. ``exp.details``: ``stage_tokens`` (tokens per stage)
    and ``wins`` (per pooling, the outputs each input token won, c_p) per image."""
    net = batch.model.net
    winners: list[torch.Tensor] = []
    with torch.no_grad():
        logits = net.forward_head(net.forward_features(batch.x, winners))
    batch.record(logits)
    lengths = net.cfg.lengths()
    traced, wins = pooling_trace(winners, lengths)
    batch.details["stage_tokens"] = [list(lengths) for _ in range(len(logits))]
    batch.details["wins"] = [[[round(v, 4) for v in w[b].tolist()] for w in wins] for b in range(len(logits))]
    return batch.layout.to_grid(traced.to(batch.x.dtype))
