"""R-Cut's cost on shapes-vit: its batched channel scoring against a per-channel loop, and the whole method in
forwards and seconds per image against one forward of the model.

    python benchmarks/rcut.py                        # 4 images for the loop, 32 for the method, one thread
    python benchmarks/rcut.py --loop-images 2 --images 16

The loop (:func:`channel_scores_loop`, also the reference of tests/test_rcut.py) runs one forward per channel of
each image, one masked image at a time, as the authors' code would with a batch of one; the batched scoring
(``vitx.methods.inherent.rcut.channel_scores``) runs every channel of every image in ``internal_batch_size``-image
forwards. Both score the same images with the same targets; it prints their seconds (wall and CPU), the ratio and the
largest difference of their scores. Forwards per image count the images that go through the network during one
``vitx.explain`` call, divided by the number of images; the baseline is one forward of the same images in one pass.
"""
from __future__ import annotations

import argparse
import time

import torch

import vitx
from vitx.batch import Batch
from vitx.methods.inherent.rcut import channel_masks, channel_scores, token_features
from vitx.methods.perturbation import target_scores


def channel_scores_loop(model, x: torch.Tensor, targets: torch.Tensor, features: torch.Tensor,
                        score: str = "probability") -> torch.Tensor:
    """(B, D) s_bk = f_t(x_b ⊙ M_bk), one forward of one masked image per channel: the reference of the batched
    scoring."""
    scores = torch.empty(features.shape[:2], dtype=x.dtype, device=x.device)
    with torch.no_grad():
        for b in range(features.shape[0]):
            for k in range(features.shape[1]):
                mask = channel_masks(features[b, k][None], tuple(x.shape[-2:]))
                scores[b, k] = target_scores(model(x[b:b + 1] * mask[:, None]), targets[b:b + 1], score)[0]
    return scores


def prepared(model, x: torch.Tensor) -> tuple[Batch, torch.Tensor]:
    """A batch of ``x`` with its predicted targets fixed, and its features at the last block's norm1."""
    batch = Batch(model, x, model.layout(x), None)
    with torch.no_grad():
        features = token_features(batch, len(model.adapter.blocks()) - 1)
    return batch, features


def timed(fn, repeats: int):
    """fn()'s result and its least (wall, CPU) seconds over ``repeats`` runs: CPU time is the fairer clock on a
    machine shared with other jobs, and the least of a few runs the one least disturbed by them."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = tuple(min(b, t) for b, t in zip(best, (time.perf_counter() - wall, time.process_time() - cpu)))
    return result, best


class Counter:
    """Images through the explained network while the block is open."""

    def __init__(self, net):
        self.net = net

    def __enter__(self) -> "Counter":
        self.images, self.handle = 0, self.net.register_forward_pre_hook(self._count)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def _count(self, module, inputs) -> None:
        self.images += inputs[0].shape[0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop-images", type=int, default=4)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--internal-batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each timing, the least kept")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=30_000)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = vitx.load_model("shapes-vit", device=args.device)
    x = model.normalize(vitx.data.shapes(n=max(args.images, args.loop_images), seed=args.seed).images.to(args.device))

    batch, features = prepared(model, x[:args.loop_images])
    channel_scores(batch, features[:1], "probability", args.internal_batch_size)          # warm-up
    batched, fast = timed(lambda: channel_scores(batch, features, "probability", args.internal_batch_size),
                          args.repeats)
    looped, slow = timed(lambda: channel_scores_loop(model, batch.x, batch.targets, features), args.repeats)
    print(f"channel scoring, {args.loop_images} images x {features.shape[1]} channels, {args.threads} thread(s); "
          f"seconds as wall / CPU time, the least of {args.repeats} runs")
    print(f"  batched ({args.internal_batch_size} per forward): {fast[0]:.3f} / {fast[1]:.3f} s   per-channel loop: "
          f"{slow[0]:.3f} / {slow[1]:.3f} s   ratio {slow[0] / fast[0]:.1f}x / {slow[1] / fast[1]:.1f}x   "
          f"largest |difference| {(batched - looped).abs().max().item():.2e}")

    images = x[:args.images]
    with torch.no_grad():
        model(images)                                                                    # warm-up
        _, forward = timed(lambda: model(images), args.repeats)
    with Counter(model.net) as counter:
        _, seconds = timed(lambda: vitx.explain(model, images, method="r-cut",
                                                internal_batch_size=args.internal_batch_size), 1)
    per_image = [s / args.images * 1e3 for s in (*seconds, *forward)]
    print(f"r-cut on {args.images} images: {counter.images / args.images:.0f} forwards and 0 backwards per image, "
          f"{per_image[0]:.1f} / {per_image[1]:.1f} ms per image = {seconds[0] / forward[0]:.0f}x / "
          f"{seconds[1] / forward[1]:.0f}x one forward ({per_image[2]:.2f} / {per_image[3]:.2f} ms per image in one "
          f"pass of {args.images})")


if __name__ == "__main__":
    main()
