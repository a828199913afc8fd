"""Shipped checkpoints: small models trained by ``vitx train`` on vitx's own data, each with a model card."""
from __future__ import annotations

from pathlib import Path

from ..checkpoint import read_metadata
from ..errors import VitxError

ZOO_DIR = Path(__file__).parent
NAMES = ("shapes-vit", "shapes-vit-multi", "shapes-vit-surrogate", "shapes-vit-shapley", "shapes-nest",
         "shapes-nest-gan", "shapes-vqa-single", "shapes-vqa-dual", "shapes-detr", "shapes-clip",
         "shapes-vit-dynamicvit", "shapes-vit-evit", "shapes-vit-iared2",
         "shapes-vit-diffmask", "shapes-vit-slim", "shapes-vit-xpruner", "shapes-hvt", "shapes-vit-net",
         "shapes-vit-exvit", "shapes-vit-dino", "shapes-vit-concepts")


def zoo_path(name: str) -> Path:
    if name not in NAMES:
        raise VitxError(f"no zoo model named {name!r}; the zoo has: {', '.join(NAMES)}")
    path = ZOO_DIR / f"{name}.safetensors"
    if not path.exists():
        raise VitxError(f"zoo model {name!r} is not built yet: run `vitx train {name}`")
    return path


def models() -> list[dict]:
    """One row per zoo model: name, kind (classifier, surrogate, shapley-explainer, generator, vqa, detr, clip),
    architecture, dataset, accuracy (of a classifier or surrogate; a VQA model's overall answer accuracy), quality (in
    words: its accuracy, or a detector's AP50), file (and its model card)."""
    rows = []
    for name in NAMES:
        path = ZOO_DIR / f"{name}.safetensors"
        meta = read_metadata(path) if path.exists() else {}
        rows.append({"name": name, "kind": meta.get("kind", "classifier") if meta else "",
                     "architecture": meta.get("arch", ""), "dataset": meta.get("dataset", ""),
                     "accuracy": meta.get("metrics", {}).get("accuracy"), "quality": quality(meta.get("metrics", {})),
                     "file": str(path),
                     "card": str(ZOO_DIR / f"{name}.md")})
    return rows


def quality(metrics: dict) -> str:
    """A checkpoint's headline score in words: "accuracy 0.992", a detector's "AP50 0.993", an image-text model's
    "zero-shot accuracy 0.970, R@1 0.412" (image-to-caption retrieval), or ""."""
    if "image_to_text_r1" in metrics:
        return f"zero-shot accuracy {metrics['accuracy']:.3f}, R@1 {metrics['image_to_text_r1']:.3f}"
    if "accuracy" in metrics:
        return f"accuracy {metrics['accuracy']:.3f}"
    return f"AP50 {metrics['ap50']:.3f}" if "ap50" in metrics else ""
