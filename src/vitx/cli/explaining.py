"""``vitx explain``: every image with every method; each method's overlays and maps written as it finishes, the
paginated grid and pages at the end. A bi-modal model takes one ``--text`` question per image: the questions are
checked (and words outside the vocabulary named) before anything is written, and the pictures show each question's
words coloured by relevance beside the answer. A detector's run explains each object (:mod:`.detecting`): one
overlay and map per object and method, named ``<image>_q<query>_<class>_<method>``, listed in ``objects.json``;
without any detection it warns and writes nothing. An image-text model's run explains every image with every ``--text``
prompt (or, with ``--target``, with that one): one overlay, map and text map per (image, prompt) pair and method,
named ``<image>_p<prompt index>_<method>``, the prompt's words coloured under it beside the pair's similarity."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import VitxError
from ..explain import explain, questions
from ..prompts import encode_prompts, prompt_pairs
from ..explanation import Explanation
from ..images import read_image
from ..loading import WITH_WEIGHTS_FILE, load_model
from ..objects import find_objects, refuse_threshold
from ..naming import explanation_file, image_stems, numbered
from ..registry import Method, get_method, refusals
from ..report import explanation_pages
from ..targets import resolve_targets
from ..viz import ROWS_PER_PAGE, gradcat_tree, grid_pages, prediction_label, probability
from ..viz.overlay import overlay_scale
from ..viz.text import plural
from .cost import estimate
from .detecting import detector_target, object_label, object_table
from .options import comma_list, method_params, one_line_warnings, output_dir

TREE_CLASSES = 3


def run_explain(args) -> int:
    with one_line_warnings():
        return _run_explain(args)


def _run_explain(args) -> int:
    if args.weights and not args.model.startswith(WITH_WEIGHTS_FILE):
        raise VitxError("--weights is for timm:<name> and torchvision:<name> models only")
    wanted = None if args.method == "all" else [get_method(name) for name in comma_list(args.method)]
    names = image_stems(args.images)
    pictures = [read_image(path) for path in args.images]
    model = load_model(args.model, arch=args.arch, weights=args.weights, device=args.device)
    refuse_threshold(model, args.score_threshold, "--score-threshold")
    x, frames = model.preprocess(pictures, resize=args.resize, frames=True)
    frames = [replace(frame, name=name) for frame, name in zip(frames, names)]
    layout = model.layout(x)
    if wanted is None:
        wanted = applicable_methods(model, layout)
    params = method_params(args.param, [info.name for info in wanted], model, layout, "explained")
    for info in wanted:
        if info.name not in params:
            info.check_model(model, layout)
    objects = pairs = None
    if model.image_text:   # no, empty or too long prompts and a target out of range refused before --out exists
        pairs = prompt_pairs(model, args.target, len(pictures), encode_prompts(model, args.text)[1])
    else:
        questions(model, args.text, len(pictures))  # refused here, before --out exists; unknown words warned once
    if pairs is not None:
        targets = args.target   # explain resolves it among the prompts, as checked above
    elif model.detector:
        targets = find_objects(model, x, detector_target(args.target), args.score_threshold, args.batch_size)
        objects = targets.rows(model.config.class_names)   # every method explains these, without detecting again
        if not objects:   # found before --out exists; find_objects has warned: no detection over the threshold
            return 0
    else:
        targets = resolve_targets(args.target, len(pictures), model)
    rows, unit = ((len(pairs), "pair") if pairs is not None else (len(pictures), "image") if objects is None
                  else (len(objects), "object"))
    if args.method == "all":
        bound = [(info, info.bind(params.get(info.name, {}))) for info in wanted]
        print(f"vitx: {estimate(bound, rows, layout, unit)}", file=sys.stderr)

    with output_dir(args.out) as out:
        scale = overlay_scale(x.shape[-2:])
        explanations, trees = [], []
        for k, info in enumerate(wanted, 1):
            with tqdm(total=rows, unit=unit, desc=f"{info.name} ({k}/{len(wanted)})", delay=1) as bar:
                exp = explain(model, x, method=info.name, target=targets, text=args.text, batch_size=args.batch_size,
                              memory=args.memory, progress=bar.update, score_threshold=args.score_threshold,
                              **params.get(info.name, {}))
            exp.frames = [frames[i] for i in exp.image_indices()]
            exp.save(out, scale=scale, original_size=args.original_size)
            stems = exp.names()   # the image stems; per object for a detector
            flat = [name for name, bad in zip(stems, exp.degenerate.tolist()) if bad]
            if flat:
                print(f"vitx: warning: {info.name} gave a constant or non-finite map for {plural(len(flat), unit)} "
                      f"({', '.join(flat[:5])}{', ...' if len(flat) > 5 else ''}); written as zeros", file=sys.stderr)
            if exp.method == "gradcat":
                trees = write_gradcat_trees(model, x, names, targets, exp, out, args.batch_size)
            explanations.append(exp)
        grids, pages = write_pages(model, stems, explanations, targets, out, args.model, args.text)
    count, texts = rows * len(explanations), sum(len(exp) for exp in explanations if exp.text_maps is not None)
    shown = "grid: " + (str(out / grids[0]) if len(grids) == 1 else f"{len(grids)} pages of {ROWS_PER_PAGE} "
                        f"{unit}s, {out / grids[0]} ... {grids[-1]}")
    maps = f"{plural(count, 'map')} (.npy)"
    maps = f", {maps} and {plural(texts, 'text map')} (_text.json)" if texts else f" and {maps}"
    if objects is not None:
        print(f"{plural(len(objects), 'object')} explained:\n{object_table(names, objects)}")
    files = ("<image>_q<query>_<class>_<method>" if objects is not None else
             "<image>_p<prompt>_<method>" if pairs is not None else "<image>_<method>")
    listed = "" if objects is None else f"; which file shows which object: {out / 'objects.json'}"
    print(f"wrote {plural(count, 'overlay')} ({files}.png){maps} to {out}/{listed}\n"
          f"{shown}\npage: {out / pages[0]}" + (f"\nGradCAT trees: {len(trees)}" if trees else ""))
    return 0


def write_pages(model, names: list[str], explanations: list[Explanation], targets, out: Path,
                model_name: str, text: list[str] | None = None) -> tuple[list[str], list[str]]:
    """The grid (grid.png, or grid_001.png, ... of :data:`ROWS_PER_PAGE` images each) and its HTML pages
    (index.html, index_002.html, ...); returns both lists of file names. ``names``: per row (image, or a detector's
    object, or an image-text model's pair) its file stem. ``text``: a bi-modal model's questions,
    shown once per image with the answer, the words coloured under every overlay (an image-text model's prompts: each
    pair's prompt under its overlays, its similarity in the row's label)."""
    first = explanations[0]
    shown = targets is not None or model.config.multi_label or text is not None  # which class is explained
    boxes = None
    if first.detection:   # a row per object: its box drawn in every cell
        labels = [object_label(name, row) for name, row in zip(names, first.objects)]
        boxes = [row["box"] for row in first.objects]
    elif first.prompted:  # a row per (image, prompt) pair
        labels = ["\n".join([name, *first.similarity_lines(i)]) for i, name in enumerate(names)]
    else:
        labels = [prediction_label(name, first.logits[i], model.class_name, multi_label=model.config.multi_label,
                                   target=int(first.targets[i]) if shown else None,
                                   question=None if text is None else text[i]) for i, name in enumerate(names)]
    words = {} if text is None else {
        "text_tokens": first.text_tokens,
        "text_maps": {exp.method: exp.text_maps for exp in explanations if exp.text_maps is not None}}
    pictures = grid_pages(first.images, {exp.method: exp.maps for exp in explanations}, labels,
                          rows_per_page=ROWS_PER_PAGE, boxes=boxes, **words)
    grids = numbered("grid", ".png", len(pictures))
    for picture, file in zip(pictures, grids):
        picture.save(out / file)
    pages = explanation_pages(grids, names, explanations, model=model.config.name or model_name,
                              rows_per_page=ROWS_PER_PAGE, questions=None if first.prompted else text)
    for file, page in pages.items():
        (out / file).write_text(page, encoding="utf-8")
    return grids, list(pages)


def write_gradcat_trees(model, x, names, targets, first: Explanation, out: Path, batch_size: int) -> list[Path]:
    """<image>_gradcat_tree.png: GradCAT's path for the --target class, or for each of the top 3 predicted;
    ``first`` is the GradCAT explanation already computed for the --target or top-1 class."""
    probabilities = first.logits.float().softmax(-1)
    classes = first.targets[:, None]
    if targets is None:
        runners_up = probabilities.topk(min(TREE_CLASSES, probabilities.shape[1])).indices[:, 1:]
        classes = torch.cat([classes, runners_up], 1)
    paths = [first.details["path"]] + [explain(model, x, "gradcat", target=classes[:, k],
                                               batch_size=batch_size).details["path"]
                                       for k in range(1, classes.shape[1])]
    images = model.denormalize(x).cpu()
    written = []
    for i, name in enumerate(names):
        titles = [f"{model.class_name(int(c))} ({probability(float(probabilities[i, c]))})" for c in classes[i]]
        written.append(out / explanation_file(name, "gradcat_tree"))
        gradcat_tree(images[i], [path[i] for path in paths], titles).save(written[-1])
    return written


def applicable_methods(model, layout) -> list[Method]:
    """Every registered method that applies to the model (its kind, its head, its layers), checked before anything
    runs; the others are named on stderr."""
    usable = []
    for name, why in refusals(model, layout).items():
        if why is None:
            usable.append(get_method(name))
        else:
            print(f"vitx: skipped: {why}", file=sys.stderr)
    if not usable:
        raise VitxError("no registered method applies to this model")
    return usable
