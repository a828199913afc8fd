"""torchvision's Vision Transformer (``torchvision.models.vit_b_16`` and its family)."""
import copy

import torch
import torch.nn.functional as F
import torchvision

from families import Family, jittered

SMALL = dict(image_size=64, patch_size=8, num_layers=3, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=5)


def torchvision_attentions(net, x):
    """Logits and per-block attention probabilities of a torchvision ViT, from a copy whose every
    ``nn.MultiheadAttention`` output is replaced by a forward hook with the same attention written out from its
    weights (in_proj_weight/bias, heads, softmax(q kᵀ / √d), out_proj), checked against torch's own output; the
    probabilities are those the logits are computed from."""
    net = copy.deepcopy(net)
    captured = []

    def written_out(module, inputs, output):
        x = inputs[0]
        B, N, D = x.shape
        q, k, v = (t.reshape(B, N, module.num_heads, -1).transpose(1, 2)
                   for t in F.linear(x, module.in_proj_weight, module.in_proj_bias).chunk(3, -1))
        attention = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
        captured.append(attention)
        out = module.out_proj((attention @ v).transpose(1, 2).reshape(B, N, D))
        torch.testing.assert_close(out, output[0], rtol=1e-4, atol=1e-5)
        return out, None

    for block in net.encoder.layers:
        block.self_attention.register_forward_hook(written_out)
    return net(x), captured


FAMILIES = [
    Family("torchvision ViT (vit_*)", jittered(lambda: torchvision.models.VisionTransformer(**SMALL)), (64, 64),
           lambda: torchvision.models.vit_b_16().eval(), torchvision_attentions),
]
