"""How much colour a Concept Transformer's global head can read from a body's tokens (docs/inherent.md).

    python studies/concepts_colour.py            # about a minute at one thread

The zoo's shapes-vit-concepts attends to the right colour concept on 0.356 of the labelled images (chance: 1/3).
This study refits a copy of its global concept head alone, with the explanation loss, on the frozen tokens of a
body (4,000 training images, data seed 1,000,123; 3,000 steps of 64 at the heads' learning rate), with the class
token as the query (the model's) or the mean of the patch tokens, and scores the colour group's top-1 agreement on
the 1,000 test images of the model card (data seed 10,000). A query linear in the tokens cannot read more colour
than the tokens carry linearly, so the figures bound what the head could reach on that body.
"""
from __future__ import annotations

import copy

import torch

import vitx
from vitx.data.concepts import GROUPS, shapes_concepts
from vitx.training.concepts import HEAD_LR, explanation_loss
from vitx.training.recipes import RECIPES

STEPS, BATCH, TRAIN_IMAGES, TRAIN_SEED, TEST_SEED = 3000, 64, 4000, 1_000_123, 10_000
QUERIES = {"class token": lambda tokens: tokens[:, :1], "mean patch": lambda tokens: tokens[:, 1:].mean(1, True)}


@torch.no_grad()
def tokens_and_labels(model, net, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = shapes_concepts(n, seed)
    x = model.normalize(data.images)
    return torch.cat([net.forward_features(x[i:i + 250]) for i in range(0, n, 250)]), data.global_concepts


@torch.no_grad()
def colour_top1(head, queries: torch.Tensor, labels: torch.Tensor) -> float:
    attention = head.attention(queries)[:, :, 0].mean(1)
    colours = list(GROUPS["colour"])
    labelled = labels[:, colours].sum(1) > 0
    hits = attention[:, colours].argmax(1) == labels[:, colours].argmax(1)
    return hits[labelled].float().mean().item()


def refit(head, queries: torch.Tensor, labels: torch.Tensor) -> None:
    optimiser = torch.optim.AdamW(head.parameters(), lr=RECIPES["shapes-vit-concepts"].lr * HEAD_LR)
    generator = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        rows = torch.randint(0, len(queries), (BATCH,), generator=generator)
        _, attention = head(queries[rows])
        loss = explanation_loss(attention[:, :, 0].mean(1), labels[rows])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def main() -> None:
    torch.manual_seed(0)
    concepts = vitx.load_model("shapes-vit-concepts")
    shipped = concepts.net.eval()
    test_tokens, test_labels = tokens_and_labels(concepts, shipped, 1000, TEST_SEED)
    shipped_top1 = colour_top1(shipped.global_head, test_tokens[:, :1], test_labels)
    print(f"shipped head, class token: colour top-1 {shipped_top1:.3f}")
    for body_name in ("shapes-vit-concepts", "shapes-vit"):
        body = vitx.load_model(body_name).net.eval()
        train = tokens_and_labels(concepts, body, TRAIN_IMAGES, TRAIN_SEED)
        test = tokens_and_labels(concepts, body, 1000, TEST_SEED)
        for query, select in QUERIES.items():
            head = copy.deepcopy(shipped.global_head)
            refit(head, select(train[0]), train[1])
            print(f"{body_name} body, head refit, {query} query: colour top-1 "
                  f"{colour_top1(head, select(test[0]), test[1]):.3f}")


if __name__ == "__main__":
    main()
