"""Can shapes_vqa be answered from the question alone? Text-only models against chance, per question type.

    python studies/vqa_text_only.py                                   # the table in docs/data.md
    python studies/vqa_text_only.py --samples docs/data/shapes_vqa.png   # the picture there

Two text-only models are trained on the first 5,000 questions of data seed 0 and tested on the first 2,000 of
seed 1: the majority answer of each exact question string (``vitx.data.shapes_vqa.text_only_baseline``, the best
any text-only model can do given enough data) and a logistic regression on the question's bag of words
(scikit-learn). Chance is 1 / (answers of the type); the standard error is that of a chance-level accuracy.
"""
from __future__ import annotations

import argparse
import math

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from vitx.data import ANSWERS, shapes_vqa
from vitx.data.shapes_vqa import QUESTION_TYPES, _specs, text_only_baseline

TRAIN, TEST = 5000, 2000


def logistic(train, test):
    """Per-type accuracy of a bag-of-words logistic regression over all answers."""
    words = CountVectorizer(token_pattern=r"[a-z0-9]+|\?")
    x = words.fit_transform([s.question for s in train])
    model = LogisticRegression(max_iter=2000).fit(x, [s.answer for s in train])
    guess = model.predict(words.transform([s.question for s in test]))
    return {k: float(np.mean([g == s.answer for g, s in zip(guess, test) if s.kind == k])) for k in QUESTION_TYPES}


def samples(path, n=10):
    """The first ``n`` items of seed 0 with their question and answer, the ground-truth objects outlined."""
    from matplotlib.figure import Figure

    data = shapes_vqa(n=n, seed=0, image_size=64)
    fig = Figure(figsize=(2.6 * 5, 3.3 * math.ceil(n / 5)))
    for i in range(n):
        ax = fig.add_subplot(math.ceil(n / 5), 5, i + 1)
        ax.imshow(data.images[i].permute(1, 2, 0).numpy())
        ax.contour(data.gt_masks[i].numpy(), levels=[0.5], colors="white", linewidths=1.5)
        question = data.questions[i].replace(" object ", "\nobject ") if len(data.questions[i]) > 30 \
            else data.questions[i]
        ax.set_title(f"{question}\n→ {ANSWERS[int(data.answers[i])]}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", help="write a picture of the first items here instead of the table")
    args = parser.parse_args()
    if args.samples:
        return samples(args.samples)
    majority = text_only_baseline(TRAIN, TEST, seed=0)
    bow = logistic(_specs(TRAIN, 0), _specs(TEST, 1))
    print("| type | test questions | chance | standard error | majority per question | bag-of-words logistic |")
    print("|---|---|---|---|---|---|")
    for kind, (acc, chance, n) in majority.items():
        se = math.sqrt(chance * (1 - chance) / n)
        print(f"| {kind} | {n} | {chance:.3f} | {se:.3f} | {acc:.3f} | {bow[kind]:.3f} |")


if __name__ == "__main__":
    main()
