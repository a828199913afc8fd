"""The two VQA recipes of ``vitx train`` (``shapes-vqa-single``, ``shapes-vqa-dual``): cross-entropy on the
answers of :func:`vitx.data.shapes_vqa`, the image side started from ``shapes-vit``; scored per question type on
fresh questions and described by a model card that says what each model gets right and wrong per type."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ..checkpoint import read_checkpoint
from ..data.shapes_vqa import ANSWERS, MAX_LENGTH, QUESTION_TYPES, TOKENIZER, TYPE_ANSWERS, shapes_vqa
from ..models import ARCHITECTURES, create_model
from .classifier import require_start
from .draws import step_batches
from .device import OnDevice
from .recipes import _TRAIN_SEED_STRIDE, Recipe

TEST_QUESTIONS = 2000
CONFUSIONS = 3                 # the commonest confusions recorded per question type
BAR = {"overall": 0.95, "per type": 0.90}  # issue 13's answer accuracy for the zoo models
CURVE_POINTS = 10              # windows of the training-batch accuracy curve kept in the metadata


def image_side_from(net, path: Path) -> list[str]:
    """Load a ``vitx_shapes`` classifier's image side into a VQA transformer: ``patch_embed.*``, the patch
    position embeddings (``pos_embed`` without its class token) as ``image_pos``, and its blocks as the
    single stream's ``blocks`` (a detector's encoder ``blocks``) or the dual stream's ``image_blocks``. Returns the
    keys loaded."""
    state, _ = read_checkpoint(require_start(path))
    blocks = "image_blocks" if hasattr(net, "image_blocks") else "blocks"
    moved = {k: v for k, v in state.items() if k.startswith("patch_embed.")}
    moved["image_pos"] = state["pos_embed"][:, -net.image_pos.shape[1]:]
    moved.update({blocks + k[len("blocks"):]: v for k, v in state.items() if k.startswith("blocks.")})
    unexpected = net.load_state_dict(moved, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"{path.name} has weights the VQA model lacks: {', '.join(unexpected)}")
    return sorted(moved)


def answer_batch(n: int, seed: int):
    """A training step's data: ``shapes_vqa(n, seed)``."""
    return shapes_vqa(n=n, seed=seed)


POOL_CHUNK = 1000
POOLED = ("images", "input_ids", "attention_mask", "answers", "types")


def pool_chunk(n: int, seed: int) -> dict[str, torch.Tensor]:
    """What training reads of ``shapes_vqa(n, seed)``, images in float16: half the memory (and the shared memory
    between worker processes) of the float32 images, and no object masks."""
    data = shapes_vqa(n=n, seed=seed)
    return {k: getattr(data, k).half() if k == "images" else getattr(data, k) for k in POOLED}


def question_pool(n: int, seed: int, workers: int, cache: Path | None = None) -> dict[str, torch.Tensor]:
    """``n`` items of :func:`shapes_vqa` drawn once for a run of ``seed``: chunk j of POOL_CHUNK from data seed
    1,000,000 (seed + 1) + j, by ``workers`` processes; images kept in float16. With ``cache`` (a directory) the pool
    is saved there and read back by later runs of the same seed and size."""
    path = None if cache is None else Path(cache) / f"shapes_vqa-pool-{seed}-{n}.pt"
    if path is not None and path.exists():
        return torch.load(path)
    seeds = [_TRAIN_SEED_STRIDE * (seed + 1) + j for j in range(-(-n // POOL_CHUNK))]
    parts = list(step_batches(pool_chunk, seeds, POOL_CHUNK, workers))
    pool = {k: torch.cat([p[k] for p in parts])[:n] for k in POOLED}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(pool, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)     # whole, or not there: another run may read it meanwhile
    return pool


def pool_batches(pool: dict[str, torch.Tensor], batch_size: int, steps: int, seed: int, device):
    """``steps`` batches from ``pool``, on ``device``: shuffled epochs (a torch generator seeded with ``seed``), the
    last incomplete batch of each epoch left out."""
    pool = {k: v.to(device) for k, v in pool.items()}
    n = len(pool["answers"])
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} is larger than the pool of {n} items")
    generator = torch.Generator().manual_seed(seed)
    step = 0
    while True:
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n - batch_size + 1, batch_size):
            if step == steps:
                return
            rows = order[start:start + batch_size]
            yield SimpleNamespace(**{k: v[rows] for k, v in pool.items()})
            step += 1


class QuestionAnswerer(OnDevice):
    """A VQA transformer trained on cross-entropy over ANSWERS, its image side started from ``recipe.start``.
    The 2,000 test questions are drawn by a background worker while it trains when ``workers`` > 0."""
    draw = staticmethod(answer_batch)     # a step's data, when the recipe draws fresh batches (no pool)

    def __init__(self, recipe: Recipe, out_dir: Path, seed: int, test_seed: int, workers: int = 0):
        super().__init__(create_model(recipe.arch))
        self.loaded = image_side_from(self.net, out_dir / f"{recipe.start}.safetensors")
        self.test = iter(step_batches(answer_batch, [test_seed], TEST_QUESTIONS, min(workers, 1)))
        self.records: list[torch.Tensor] = []
        self.curve: list[dict] = []
        self.meta = {"kind": "vqa", "class_names": ANSWERS, "question_types": QUESTION_TYPES,
                     "vocabulary": TOKENIZER.tokens, "max_length": MAX_LENGTH, "multi_label": False,
                     "dataset": "shapes_vqa 64px", "pool": recipe.pool, "train_curve": self.curve}

    def logits(self, images, input_ids, attention_mask) -> torch.Tensor:
        return self.net(self.normalized(images), input_ids.to(self.device), attention_mask.to(self.device))

    def loss(self, data) -> torch.Tensor:
        logits = self.logits(data.images, data.input_ids, data.attention_mask)
        answers, types = data.answers.to(logits.device), data.types.to(logits.device)
        loss = F.cross_entropy(logits, answers)
        right = (logits.argmax(1) == answers).float()
        counts = torch.stack([torch.bincount(types, w, len(QUESTION_TYPES)) for w in (right, torch.ones_like(right))])
        self.records.append(torch.cat([loss.detach()[None], counts.flatten()]))  # stays on the device: no sync
        return loss

    @torch.no_grad()
    def score(self, test_seed: int) -> dict:
        """Answer accuracy on the test questions (``shapes_vqa(2000, test_seed)``), and the training curve."""
        self.summarise_curve()
        data = next(self.test)
        if data.seed != test_seed:
            raise ValueError(f"the test questions were drawn with seed {data.seed}, not {test_seed}")
        predicted = torch.cat([self.logits(*data[i:i + 500][:3]).argmax(1).cpu() for i in range(0, len(data), 500)])
        return answer_metrics(predicted, data.answers, data.types)

    def summarise_curve(self) -> None:
        """Training-batch loss and accuracy per type over ``CURVE_POINTS`` equal windows of the steps."""
        rows = torch.stack(self.records).cpu().double()
        window = -(-len(rows) // CURVE_POINTS)
        for start in range(0, len(rows), window):
            part = rows[start:start + window]
            hits, counts = part[:, 1:].sum(0).view(2, -1)
            self.curve.append({"step": start + len(part), "loss": round(part[:, 0].mean().item(), 4),
                               "accuracy": round((hits.sum() / counts.sum()).item(), 4),
                               "types": {t: round((hits[j] / counts[j].clamp(min=1)).item(), 4)
                                         for j, t in enumerate(QUESTION_TYPES)}})

    def card(self, name: str, recipe: Recipe, meta: dict) -> str:
        return vqa_card(name, recipe, meta, self.loaded)


def answer_metrics(predicted: torch.Tensor, answers: torch.Tensor, types: torch.Tensor) -> dict:
    """accuracy (overall), questions, and per question type: accuracy, n, the commonest confusions
    ``[true, predicted, count]`` and how many answers were not among the type's answers."""
    right = predicted == answers
    per_type = {}
    for j, kind in enumerate(QUESTION_TYPES):
        mine = types == j
        wrong = Counter(zip(answers[mine & ~right].tolist(), predicted[mine & ~right].tolist()))
        outside = sum(ANSWERS[p] not in TYPE_ANSWERS[kind] for p in predicted[mine].tolist())
        per_type[kind] = {"accuracy": round(right[mine].float().mean().item(), 4), "n": int(mine.sum()),
                          "confusions": [[ANSWERS[t], ANSWERS[p], c] for (t, p), c in wrong.most_common(CONFUSIONS)],
                          "outside_type": outside}
    return {"accuracy": round(right.float().mean().item(), 4), "questions": len(answers), "types": per_type}


def meets_bar(metrics: dict) -> bool:
    return (metrics["accuracy"] >= BAR["overall"]
            and all(m["accuracy"] >= BAR["per type"] for m in metrics["types"].values()))


def type_words(kind: str, m: dict) -> str:
    """One line, from the metrics, on what a model gets right and wrong for questions of one type."""
    right = round(m["accuracy"] * m["n"])
    text = f"- **{kind}**: {right:,} of {m['n']:,} right ({m['accuracy']:.1%})"
    if not m["confusions"]:
        return text + "; no mistakes."
    mistakes = ", ".join(f"\"{p}\" for \"{t}\" ({c}x)" for t, p, c in m["confusions"])
    share = sum(c for *_, c in m["confusions"]) / (m["n"] - right)
    outside = (f"{m['outside_type']} answers were not among the type's answers" if m["outside_type"]
               else "every answer was among the type's answers")
    return (f"{text}. Commonest mistakes: {mistakes} (together {share:.0%} of its {m['n'] - right} mistakes); "
            f"{outside}.")


def architecture_text(arch: str) -> str:
    cfg = ARCHITECTURES[arch]
    grid = cfg.image_size // cfg.patch_size
    common = (f"{cfg.embed_dim} dimensions, {cfg.num_heads} heads, MLP ratio {cfg.mlp_ratio:g}; image: "
              f"{cfg.image_size}x{cfg.image_size} input, {cfg.patch_size}x{cfg.patch_size} patches ({grid * grid} patch tokens) "
              f"embedded by `vitx_shapes`' convolutional stem; text: [CLS] words [SEP], at most {cfg.max_length} "
              f"tokens of a {len(cfg.vocabulary)}-token word vocabulary")
    if cfg.streams == "single":
        layers = (f"one stream (VisualBERT-like, Li et al. 2019): word tokens and patch tokens, each with its "
                  f"position and a type embedding, concatenated and read by {cfg.depth} pre-norm self-attention blocks")
    else:
        layers = (f"two streams (LXMERT-like, Tan & Bansal, EMNLP 2019): {cfg.text_layers} self-attention blocks on "
                  f"the words, {cfg.image_layers} on the patches, then {cfg.cross_layers} cross-modality layers (each "
                  "stream attends to the other, then to itself)")
    params = sum(p.numel() for p in create_model(arch).parameters())
    return (f"`{arch}` (vitx.models.vqa): {layers}; {common}. The answer is read from the final [CLS] token: "
            f"LayerNorm, Linear-GELU-Linear to {len(cfg.answers)} answers. {params:,} parameters.")


def data_text(recipe: Recipe, meta: dict) -> str:
    """Where a run's training questions came from, for its card."""
    if not recipe.pool:
        return (f"A fresh batch of {meta['batch_size']} questions at every step (step k draws data seed\n"
                "1,000,000 x (seed + 1) + k).")
    passes = meta["steps"] * meta["batch_size"] / recipe.pool
    return (f"A pool of {recipe.pool:,} questions drawn once (chunk j of {POOL_CHUNK:,} from data seed\n"
            f"1,000,000 x (seed + 1) + j), batches of {meta['batch_size']} sampled from it in shuffled epochs "
            f"({passes:.1f} passes).")


def vqa_card(name: str, recipe: Recipe, meta: dict, loaded: list[str]) -> str:
    """The Markdown model card of a VQA recipe."""
    m = meta["metrics"]
    rows = "\n".join(f"| {kind} | {t['accuracy']:.3f} | {t['n']} | "
                     f"{', '.join(f'{a} → {b} ({c})' for a, b, c in t['confusions']) or '-'} |"
                     for kind, t in m["types"].items())
    curve = "\n".join(f"| {p['step']} | {p['loss']:.3f} | {p['accuracy']:.3f} | "
                      + " | ".join(f"{p['types'][t]:.3f}" for t in QUESTION_TYPES) + " |" for p in meta["train_curve"])
    verdict = ("meets" if meets_bar(m) else "does **not** meet")
    cfg = ARCHITECTURES[recipe.arch]
    blocks, count, fresh = (("blocks", cfg.depth, "the type embeddings") if cfg.streams == "single" else
                            ("image_blocks", cfg.image_layers, "the language blocks, the cross-modality layers"))
    return f"""# {name}

A small visual-question-answering transformer trained on vitx's `shapes_vqa` data, whose generator knows which
objects and which words every answer depends on, so that bi-modal explanation methods can be scored on both the
image and the question.

## Architecture

{architecture_text(recipe.arch)}
Input normalisation of the image: mean {meta['mean']}, std {meta['std']} (as `shapes-vit`).

## Task and data

`vitx.data.shapes_vqa`: 64x64 images of 2 to 4 coloured shapes (8 shapes, 6 colours) on a textured, cluttered
background, each with one templated question of 5 types ({', '.join(QUESTION_TYPES)}) and its answer among
{len(ANSWERS)} ({', '.join(ANSWERS)}); answers are balanced within each type. {data_text(recipe, meta)}
No data seed below 1,000,000 is used for training. No augmentation.

## Training

- Command: `{meta['command']}`
- Seed: {meta['seed']} (`torch.manual_seed`; the data seeds follow from it)
- Steps: {meta['steps']} at batch size {meta['batch_size']} ({meta['steps'] * meta['batch_size']:,} questions seen)
- Loss: cross-entropy over the {len(ANSWERS)} answers
- Start: the image side of `{recipe.start}` (train it first; the zoo ships it): its patch embedding,
  its patch position embeddings (`pos_embed` without the class token) as `image_pos`, its {count} blocks as
  `{blocks}`; everything else ({fresh}, word and text position embeddings, final norm, answer head) as the
  architecture initialises it (truncated normal, std 0.02)
- Optimiser: AdamW, learning rate {recipe.lr:g}, weight decay {recipe.weight_decay:g}, gradient norm clipped
  at {recipe.clip:g}; linear warm-up over {recipe.warmup:.0%} of the steps, then cosine decay to zero
- Training time: {meta['train_seconds'] / 60:.1f} minutes on {meta['train_device']}

Training-batch accuracy over the run (each row a window of steps, up to the step shown):

| step | loss | accuracy | {' | '.join(QUESTION_TYPES)} |
|---:|---:|---:|{'---:|' * len(QUESTION_TYPES)}
{curve}

## Results

On {m['questions']:,} fresh questions (data seed {meta['test_seed']}): answer accuracy **{m['accuracy']:.3f}**.
The model {verdict} issue 13's bar (at least {BAR['overall']:.0%} overall and {BAR['per type']:.0%} per question type).

| question type | accuracy | questions | commonest confusions (true → predicted (count)) |
|---|---:|---:|---|
{rows}

What it gets right and wrong, per type:

{chr(10).join(type_words(kind, t) for kind, t in m['types'].items())}

## Intended use and limits

A test subject for bi-modal explanation methods (image and text relevance against the generator's ground truth)
and their perturbation tests. It knows only this synthetic world and these five question templates: other
images, other wordings or words outside its vocabulary say nothing about it (it will still pick one of its
{len(ANSWERS)} answers).
"""
