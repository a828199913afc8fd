"""The HVT recipe of ``vitx train`` (shapes-hvt): a hierarchical-pooling ViT (:mod:`vitx.models.hvt`) trained from
scratch as the classifiers are, scored for accuracy, FLOPs and images per second beside ``shapes-vit``, and its card."""
from __future__ import annotations

from ..checkpoint import read_metadata
from ..data import shapes
from ..flops import SPEED_BATCH, SPEED_REPEATS, count_flops, images_per_second
from ..model import evaluating
from ..models import ARCHITECTURES, create_model
from ..zoo import zoo_path
from .classifier import Classifier, frozen, score_shapes
from .recipes import Recipe

REFERENCE = "shapes-vit"   # the classifier whose size HVT takes, measured beside it


class HierarchicalClassifier(Classifier):
    """A shapes classifier of an HVT architecture (mimetic initialisation, as shapes-vit's), compared with the zoo's
    ``shapes-vit`` for accuracy, FLOPs and speed when it is scored."""

    def score(self, test_seed: int) -> dict:
        scores = super().score(test_seed)
        reference = frozen(zoo_path(REFERENCE))
        x = self.model.normalize(shapes(n=SPEED_BATCH, seed=test_seed).images)
        with evaluating(self.net):
            speed = {name: images_per_second(net, x) for name, net in (("hvt", self.net), (REFERENCE, reference.net))}
            return {**scores, "flops": count_flops(self.net, x[:1]), "reference_flops": count_flops(reference.net, x[:1]),
                    "images_per_second": speed["hvt"], "reference_images_per_second": speed[REFERENCE],
                    "reference_accuracy": score_shapes(reference, "single", test_seed)["accuracy"]}

    def card(self, name: str, recipe: Recipe, meta: dict) -> str:
        return hvt_card(name, recipe, meta, super().card(name, recipe, meta))


def hvt_card(name: str, recipe: Recipe, meta: dict, classifier_card: str) -> str:
    """The classifier card with HVT's architecture and a comparison with ``shapes-vit``."""
    cfg, m = ARCHITECTURES[recipe.arch], meta["metrics"]
    lengths = cfg.lengths()
    head, _, rest = classifier_card.partition("## Architecture\n\n")
    _, _, rest = rest.partition(" parameters.\n")
    body = (f"`{recipe.arch}` (vitx's HVT; Pan et al., ICCV 2021, Scalable Vision Transformers with Hierarchical "
            f"Pooling):\n{cfg.image_size}x{cfg.image_size} input, {cfg.patch_size}x{cfg.patch_size} patches embedded by "
            f"a convolutional stem as `vitx_shapes`'s, no class token,\n{cfg.embed_dim} dimensions, {cfg.num_heads} "
            f"heads, MLP ratio {cfg.mlp_ratio:g}; {len(cfg.depths)} stages of {', '.join(map(str, cfg.depths))} blocks "
            f"over {', '.join(map(str, lengths))} tokens,\n1-D max pooling over the token sequence between stages "
            f"(kernel {cfg.pool_kernel}, stride {cfg.pool_stride}, padding {cfg.pool_padding}) followed by the stage's "
            f"own position embedding;\nhead: LayerNorm, mean over the tokens, linear")
    params = sum(p.numel() for p in create_model(recipe.arch, **recipe.config).parameters())
    ref = read_metadata(zoo_path(REFERENCE))
    return head + "## Architecture\n\n" + body + f",\n{params:,} parameters.\n" + rest + f"""
## Cost beside `{REFERENCE}`

Measured in one run at the end of training (FLOPs by `torch.utils.flop_counter` at batch 1, a multiply-add counts 2;
images per second: median of {SPEED_REPEATS} forwards of a batch of {SPEED_BATCH} on {meta['train_device']}):

| | accuracy | FLOPs per image | images/s at batch {SPEED_BATCH} |
|---|---:|---:|---:|
| `{REFERENCE}` | {m['reference_accuracy']:.3f} | {m['reference_flops'] / 1e6:.1f} M | {m['reference_images_per_second']:.0f} |
| `{name}` | {m['accuracy']:.3f} | {m['flops'] / 1e6:.1f} M ({1 - m['flops'] / m['reference_flops']:.0%} fewer) | {m['images_per_second']:.0f} ({m['images_per_second'] / m['reference_images_per_second']:.2f}x) |

`{name}` trained for {meta['steps']:,} steps of {meta['batch_size']}, `{REFERENCE}` for {ref['steps']:,} of {ref['batch_size']}.

## Explaining it

`vitx.explain(model, x, method="hvt-pooling")` reads its max poolings (how much of the tokens the head reads each
patch won, traced down the stages); the gradient methods and occlusion, RISE and KernelSHAP run on it through the
tap; Grad-CAM reads the first stage, the last tokens that are the patch grid (docs/pruning.md, HVT).
"""
