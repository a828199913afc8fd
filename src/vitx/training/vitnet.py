"""The ViT-NeT recipe of ``vitx train`` (shapes-vit-net; the model in :mod:`vitx.models.vitnet`): ``shapes-vit``'s
backbone and head under a new neural tree decoder, fine-tuned together with the negative log-likelihood of the soft
routing's mixture (the authors' loss), then each prototype replaced by its nearest training patch (the projection),
scored with the hard path, and described by its model card."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import read_checkpoint
from ..data import CLASS_NAMES, shapes
from ..loading import load_model
from ..model import evaluating, wrap
from ..models import create_model
from .classifier import require_start, score_shapes
from .recipes import _TRAIN_SEED_STRIDE, MEAN, STD, TEST_IMAGES, Recipe
from .vitnet_card import BACKBONE_LR, PROJECTION_STEPS, vitnet_card

def projection_seeds(seed: int, steps: int) -> list[int]:
    """The data seeds of the last PROJECTION_STEPS training batches of a run (its step seeds, :mod:`.recipes`)."""
    return [_TRAIN_SEED_STRIDE * (seed + 1) + k for k in range(max(0, steps - PROJECTION_STEPS), steps)]


@torch.no_grad()
def project_prototypes(model, seeds: list[int], batch_size: int) -> torch.Tensor:
    """Replace each prototype p_i by the nearest patch feature z^i_n (its own node's stream) over the images
    ``shapes(batch_size, s)`` for s in ``seeds`` (ProtoTree's projection over the training set), record the source
    (data seed, image index, patch index) in ``tree.prototype_source`` and return the distances moved (I,)."""
    net = model.net
    tree, internal = net.tree, len(net.tree.prototypes)
    best = torch.full((internal,), float("inf"), device=tree.prototypes.device)
    nearest = tree.prototypes.detach().clone()
    with evaluating(net):
        for s in seeds:
            tokens = net.forward_features(model.normalize(shapes(n=batch_size, seed=s).images.to(best.device)))
            z = torch.stack(tree.streams(tokens[:, net.num_prefix_tokens:])[:internal], 1)      # (B, I, N, dim)
            distance = (z - tree.prototypes[:, None]).norm(dim=-1).transpose(0, 1).flatten(1)  # (I, B·N)
            value, flat = distance.min(1)
            better = value < best
            image, patch = flat // z.shape[2], flat % z.shape[2]
            best = torch.where(better, value, best)
            nearest[better] = z[image, torch.arange(internal, device=z.device), patch][better]
            for i in better.nonzero()[:, 0].tolist():
                tree.prototype_source[i] = torch.tensor([s, image[i], patch[i]])
    tree.prototypes.copy_(nearest)
    return best


class TreeTrainer:
    """``recipe.start`` (backbone and head) under a new tree, trained as one network."""

    def __init__(self, recipe: Recipe, out_dir: Path, seed: int, steps: int, batch_size: int):
        self.recipe, self.seed, self.steps, self.batch_size = recipe, seed, steps, batch_size
        self.net = create_model(recipe.arch, **recipe.config)
        self.start = out_dir / f"{recipe.start}.safetensors"
        start_from_backbone(self.net, self.start)
        self.model = wrap(self.net, mean=MEAN, std=STD, class_names=CLASS_NAMES)
        self.meta: dict = {}

    def param_groups(self, lr: float) -> list[dict]:
        tree = list(self.net.tree.parameters())
        ids = {id(p) for p in tree}
        return [{"params": tree}, {"params": [p for p in self.net.parameters() if id(p) not in ids],
                                   "lr": lr * BACKBONE_LR}]

    def loss(self, data) -> torch.Tensor:
        self.net.patch_embed.eval()                           # the stem's BatchNorm keeps shapes-vit's statistics
        return F.nll_loss(self.net(self.model.normalize(data.images)), data.labels)

    def score(self, test_seed: int) -> dict:
        """Accuracy on TEST_IMAGES fresh images with the hard path before and after the projection and with soft
        routing after it; ``recipe.start``'s on the same images; where each prototype was projected."""
        net = self.net
        before = score_shapes(self.model, "single", test_seed)["accuracy"]
        moved = project_prototypes(self.model, projection_seeds(self.seed, self.steps), self.batch_size)
        hard = score_shapes(self.model, "single", test_seed)["accuracy"]
        net.routing = "soft"
        soft = score_shapes(self.model, "single", test_seed)["accuracy"]
        net.routing = "hard"
        reference = score_shapes(load_model(str(self.start)), "single", test_seed)["accuracy"]
        data = shapes(n=TEST_IMAGES, seed=test_seed)
        with torch.no_grad(), evaluating(net):
            leaves = torch.cat([net.decode(net.forward_features(self.model.normalize(data.images[i:i + 250]))).leaf
                                for i in range(0, TEST_IMAGES, 250)])
        usage = torch.stack([torch.bincount(leaves[data.labels == c], minlength=2 ** net.cfg.tree_depth)
                             for c in range(len(CLASS_NAMES))])
        return {"accuracy": hard, "hard_accuracy_before_projection": before, "soft_accuracy": soft,
                "reference_accuracy": reference, "projection_distance": [round(v, 4) for v in moved.tolist()],
                "prototype_source": net.tree.prototype_source.tolist(), "leaf_usage": usage.tolist()}

    def card(self, name: str, recipe: Recipe, meta: dict) -> str:
        return vitnet_card(name, recipe, meta, self.net.cfg)


def start_from_backbone(net, path: Path) -> None:
    """Every weight of the ViT at ``path`` (its head too: the leaves add its logits), the tree left as initialised."""
    state, _ = read_checkpoint(require_start(path))
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("tree.") for k in missing), (missing, unexpected)
