"""The result of :func:`vitx.explain`."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import VitxError
from .images import Frame
from .naming import OBJECTS_FILE, explanation_file, object_stem, update_object_index
from .viz import answer_lines, overlay as draw_overlay, probability, pruned_stages, unit_heatmap
from .viz.boxes import boxed
from .viz.words import captioned, word_colours
from .viz.vitnet import tree_path


@dataclass
class Explanation:
    maps: torch.Tensor                    # (B, H, W) pixel space, higher = more relevant to the target;
                                          # a region model's (input "regions"): its token_maps, (B, 1, R)
    token_maps: torch.Tensor | None       # (B, gh, gw) on the patch grid, for methods that work on tokens
    targets: torch.Tensor                 # (B,) explained class per image
    logits: torch.Tensor                  # (B, classes) of the unmodified images
    method: str
    params: dict
    images: torch.Tensor | None           # (B, 3, H, W) in [0, 1], for drawing; None for a region model
    class_names: tuple[str, ...] = ()
    details: dict = field(default_factory=dict)
    degenerate: torch.Tensor | None = None  # (B,) bool: the method's map was constant or non-finite (then zeros)
    frames: list[Frame] | None = None     # per image: original size, placement, file stem (when explain read them)
    text_maps: torch.Tensor | None = None  # bi-modal: (B, L) relevance of each text token (column j: text_tokens[i][j]),
                                           # 0 beyond each question's tokens
    text_tokens: tuple[tuple[str, ...], ...] | None = None  # bi-modal: per image its question's tokens, [CLS] first
    objects: list[dict] | None = None     # a detector's: per map, its object (image, query, class, label, score, box)
    pairs: torch.Tensor | None = None     # an image-text model's: per map, (image, prompt) indices, (B, 2)

    def __len__(self) -> int:
        return self.maps.shape[0]

    @property
    def bimodal(self) -> bool:
        return self.text_maps is not None

    def class_name(self, k: int) -> str:
        return self.class_names[k] if k < len(self.class_names) else str(k)

    def target_name(self, i: int) -> str:
        return self.class_name(int(self.targets[i]))

    @property
    def prompted(self) -> bool:
        """An image-text model's explanation: a row per (image, prompt) pair (``pairs``)."""
        return self.pairs is not None

    def similarity_lines(self, i: int) -> list[str]:
        """Under pair ``i``'s overlay: its similarity (the score explained), ``similarity: 6.731``, and among several
        prompts its zero-shot probability (the softmax of its image's similarities over the prompts)."""
        target = int(self.targets[i])
        scores = self.logits[i].detach().float().cpu()
        lines = [f"similarity: {float(scores[target]):.3f}"]
        if len(scores) > 1:
            lines.append(f"zero-shot: {probability(float(scores.softmax(-1)[target]))} among {len(scores)} prompts")
        return lines

    @property
    def detection(self) -> bool:
        return self.objects is not None

    def object_label(self, i: int) -> str:
        """A detector's object ``i`` as its overlay labels it: its class and score, ``circle 0.873``."""
        return f"{self.objects[i]['class']} {probability(self.objects[i]['score'])}"

    def overlay(self, i: int, alpha: float = 0.5, cmap: str = "jet", scale: int = 1,
                words: bool | None = None, box: bool | None = None) -> Image.Image:
        """Image ``i`` with this explanation's heatmap over it. ``box`` (default: for a detector's explanation): the
        explained object's box framed and labelled with :meth:`object_label` (:func:`vitx.viz.boxes.boxed`).
        ``words`` (default: for a bi-modal explanation):
        below it, the question's tokens coloured by ``text_maps[i]`` (:func:`vitx.viz.words.word_colours`: the words
        min-max scaled among themselves, [CLS], [SEP] and [PAD] in grey), then the predicted answer with its softmax
        probability and, where the explained answer is another, that one with its own
        (:func:`vitx.viz.answer_lines`); the picture is then at least 192 pixels wide. An image-text model's pair:
        its prompt's tokens (coloured by ``text_maps[i]``, in grey where the method gives no text map), then
        :meth:`similarity_lines`. ``words=False``: the heatmap alone, the image's size times ``scale``."""
        picture = draw_overlay(self.images[i], self.maps[i], alpha=alpha, cmap=cmap, scale=scale)
        if box or box is None and self.detection:
            if not self.detection:
                raise VitxError(f"box=True needs a detector's explanation; this {self.method!r} explanation has no "
                                "objects")
            picture = boxed(picture, self.objects[i]["box"], self.object_label(i), self.images.shape[-2:])
        if words is None:
            words = self.bimodal or self.prompted
        if not words:
            return picture
        if not (self.bimodal or self.prompted):
            raise VitxError(f"words=True needs a bi-modal explanation (text=...); this {self.method!r} explanation "
                            "has no text map")
        tokens = self.text_tokens[i]
        colours = ([None] * len(tokens) if self.text_maps is None else
                   word_colours(tokens, self.text_maps[i], cmap, alpha))
        lines = (self.similarity_lines(i) if self.prompted else
                 answer_lines(self.logits[i], self.class_name, int(self.targets[i])))
        return captioned(picture, tokens, colours, lines)

    def stages(self, i: int, scale: int = 4) -> Image.Image:
        """A pruning method's keep decisions for image ``i``: the image, then once per stage with the patches dropped
        so far greyed (:func:`vitx.viz.pruned_stages`), from ``details["kept"]``."""
        if "kept" not in self.details:
            raise VitxError(f"stages() draws a pruning method's keep decisions; this {self.method!r} explanation has "
                            "none")
        return pruned_stages(self.images[i], self.details["kept"][i], tuple(self.token_maps.shape[-2:]), scale)

    def text_relevance(self, i: int) -> dict:
        """Question ``i``'s tokens and their relevance (its text map without the padding), as saved in
        ``<name>_<method>_text.json``: ``{"tokens": [...], "relevance": [...]}``."""
        if not self.bimodal:
            raise VitxError(f"this {self.method!r} explanation has no text map: it explains an image-only model")
        tokens = list(self.text_tokens[i])
        return {"tokens": tokens, "relevance": self.text_maps[i, :len(tokens)].tolist()}

    def original_map(self, i: int, fill: float = 0.0) -> torch.Tensor:
        """Map ``i`` at its image's original size (height, width), undoing ``model.preprocess``'s resize, stretch,
        crop or pad; pixels a crop cut away get ``fill``. Needs ``frames``: set when ``vitx.explain`` was given the
        images themselves, else assign ``exp.frames`` from ``model.preprocess(images, frames=True)``."""
        if self.frames is None:
            raise VitxError("this explanation does not know its images' original sizes: pass the images to "
                            "vitx.explain, or set exp.frames from model.preprocess(images, frames=True)")
        return self.frames[i].to_original(self.maps[i], fill)

    def image_indices(self) -> list[int]:
        """Per map, the index of its image among those explained: a detector's object's ``image``, an image-text
        pair's image, else its own."""
        if self.prompted:
            return self.pairs[:, 0].tolist()
        return [o["image"] for o in self.objects] if self.detection else list(range(len(self)))

    def names(self) -> list[str]:
        """A file name stem per map: its image's file stem where known (``frames``), else 000, 001, ... (the image's
        index); for a detector's object ``<image stem>_q<query>_<class>`` (:func:`vitx.naming.object_stem`); for an
        image-text pair ``<image stem>_p<prompt index>``. The
        image's index is put before every stem when two stems are the same."""
        stems = [frame.name for frame in self.frames] if self.frames is not None else [None] * len(self)
        images = self.image_indices()
        names = [stem or f"{k:03d}" for k, stem in zip(images, stems)]
        if self.detection:
            names = [object_stem(name, o["query"], o["class"]) for name, o in zip(names, self.objects)]
        if self.prompted:
            names = [f"{name}_p{k}" for name, k in zip(names, self.pairs[:, 1].tolist())]
        if len(set(names)) < len(names):
            names = [f"{k:03d}_{name}" if stem else name for k, stem, name in zip(images, stems, names)]
        return names

    def save(self, directory: str | Path, names: list[str] | None = None, scale: int = 4,
             original_size: bool = False) -> list[Path]:
        """Write ``<name>_<method>.png`` (:meth:`overlay`, with the coloured words and the answer for a bi-modal
        explanation, the box and label of the object for a detector's) and ``<name>_<method>.npy`` (map) per map into
        ``directory``, as ``vitx explain`` does; for a pruning method ``<name>_<method>_stages.png`` (:meth:`stages`), for X-Pruner
        ``<name>_<method>_units.png`` (its class-by-unit table, :func:`vitx.viz.unit_heatmap`), for ViT-NeT
        ``<name>_<method>_path.png`` (its hard path, :func:`vitx.viz.vitnet.tree_path`);
        for a bi-modal explanation ``<name>_<method>_text.json``
        (:meth:`text_relevance`); ``names`` defaults to :meth:`names` (file stems, else 000, 001, ...; per object for
        a detector). A detector's explanation also writes ``objects.json``: a row per object (``exp.objects``' entry,
        its ``image_name`` (the image's file stem, or null), its ``name`` and the ``files`` written for it), merged
        with the rows an earlier save (another method's) left there (:func:`vitx.naming.update_object_index`). An
        explanation of no object writes nothing, not even the directory.
        ``original_size``: the maps at each image's original size (:meth:`original_map`), not the model's."""
        names = self.names() if names is None else [str(name) for name in names]
        what = "object" if self.detection else "image"
        if len(names) != len(self):
            raise VitxError(f"got {len(names)} names for {len(self)} {what}s")
        for name in names:
            if not name or Path(name).name != name or name in (".", ".."):
                raise VitxError(f"an {what} name must be a plain file name, got {name!r}")
        if len(set(names)) < len(names):
            raise VitxError(f"two {what}s have the same name, and their files would overwrite each other")
        if not len(self):
            return []
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for i, name in enumerate(names):
            picture, values = (directory / explanation_file(name, self.method, suffix) for suffix in (".png", ".npy"))
            self.overlay(i, scale=scale).save(picture)
            np.save(values, (self.original_map(i) if original_size else self.maps[i]).cpu().numpy())
            written += [picture, values]
            if "kept" in self.details:
                written.append(directory / explanation_file(name, self.method, "_stages.png"))
                self.stages(i, scale).save(written[-1])
            if "unit_table" in self.details:
                written.append(directory / explanation_file(name, self.method, "_units.png"))
                unit_heatmap(self.details["unit_table"][i], len(self.details["units"][i]["attn"]),
                             int(self.targets[i])).save(written[-1])
            if "prototypes" in self.details:
                written.append(directory / explanation_file(name, self.method, "_path.png"))
                tree_path(self.images[i], self.details["path"][i], self.details["similarity"][i],
                          self.details["prototypes"][i], self.maps[i]).save(written[-1])
            if self.bimodal:
                written.append(directory / explanation_file(name, self.method, "_text.json"))
                written[-1].write_text(json.dumps(self.text_relevance(i)) + "\n", encoding="utf-8")
        if self.detection:
            images = [frame.name for frame in self.frames] if self.frames is not None else [None] * len(self)
            rows = [{**o, "image_name": image, "name": name,
                     "files": [explanation_file(name, self.method, suffix) for suffix in (".png", ".npy")]}
                    for o, image, name in zip(self.objects, images, names)]
            written.append(update_object_index(directory / OBJECTS_FILE, rows))
        return written
