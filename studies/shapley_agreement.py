"""How closely the zoo's ViT Shapley explainer agrees with KernelSHAP on the same game, and how closely
KernelSHAP agrees with itself at the same budget (the ceiling any comparison with it can show).

    python studies/shapley_agreement.py --images 4 --samples 32768

For fresh shapes images (data seed 10,000) and their true class: ``vit-shapley`` on ``shapes-vit``, and two
KernelSHAP runs (seeds 1 and 2, ``--samples`` paired coalitions each) on the surrogate ``shapes-vit-surrogate``
with patches held out by attention masking and the class probability as value (the explainer's game). Per
image: Spearman and Pearson correlation over the 64 patches between vit-shapley and the mean of the two runs,
and between the two runs themselves.
"""
from __future__ import annotations

import argparse

import torch
from scipy.stats import pearsonr, spearmanr

import vitx
from vitx.data import shapes
from vitx.training.shapley import kernel_shap_on_game


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--start", type=int, default=0, help="index of the first image (to split a long run)")
    parser.add_argument("--samples", type=int, default=32768)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = shapes(n=args.start + args.images, seed=10_000)
    images, labels = data.images[args.start:], data.labels[args.start:]
    surrogate = vitx.load_model("shapes-vit-surrogate")
    x = surrogate.preprocess(images)
    ours = vitx.explain(vitx.load_model("shapes-vit"), x, "vit-shapley", target=labels, normalize=False)
    runs = [kernel_shap_on_game(surrogate, x, labels, args.samples, seed) for seed in (1, 2)]
    reference = (runs[0] + runs[1]) / 2
    print("| image | class | Spearman vit-shapley/KernelSHAP | Spearman KernelSHAP/KernelSHAP | "
          "Pearson vit-shapley/KernelSHAP | Pearson KernelSHAP/KernelSHAP |")
    print("|---:|---|---:|---:|---:|---:|")
    for i, (phi, ref, a, b) in enumerate(zip(ours.token_maps.flatten(1), reference, *runs)):
        print(f"| {args.start + i} | {data.class_names[int(labels[i])]} | {spearmanr(phi, ref).statistic:.3f} | "
              f"{spearmanr(a, b).statistic:.3f} | {pearsonr(phi, ref).statistic:.3f} | {pearsonr(a, b).statistic:.3f} |")


if __name__ == "__main__":
    main()
