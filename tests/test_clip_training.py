"""vitx's image-text model and its contrastive recipe (issue 15; the zoo model is trained in a later step)."""
import math

import pytest
import torch
import torch.nn.functional as F

from vitx.data import shapes_captions
from vitx.models import create_model
from vitx.training.clip import contrastive_loss, recall_at_1


def test_contrastive_loss_is_the_mean_of_both_directions():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.5, 1.0, 0.0], [0.0, 3.0, 1.0]])
    by_image = -(logits.log_softmax(1).diag()).mean()
    by_text = -(logits.log_softmax(0).diag()).mean()
    assert contrastive_loss(logits).item() == pytest.approx(((by_image + by_text) / 2).item())
    assert contrastive_loss(torch.eye(4) * 50).item() < 1e-6
    assert contrastive_loss(torch.zeros(4, 4)).item() == pytest.approx(math.log(4))


def test_recall_at_1_counts_rows_whose_own_entry_is_largest():
    similarity = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.0, 0.1, 0.7]])
    assert recall_at_1(similarity) == pytest.approx(2 / 3)
    assert recall_at_1(similarity.T) == 1.0          # every column peaks on its own row


def test_similarity_is_the_scaled_cosine_of_the_two_towers():
    torch.manual_seed(0)
    net = create_model("clip_shapes", image_layers=1, text_layers=1).eval()
    data = shapes_captions(3, seed=2)
    logits = net(data.images, data.input_ids, data.attention_mask)
    images = net.visual(data.images)
    t = net.word_embed(data.input_ids) + net.text_pos
    t = net.text_blocks[0](t, data.attention_mask)
    texts = net.text_proj(net.text_norm(t[:, 0]))
    expected = F.cosine_similarity(images[:, None], texts[None], dim=-1) / 0.07
    assert logits.shape == (3, 3)
    assert torch.allclose(logits, expected, atol=1e-4)
    assert torch.allclose(net(data.images[:1], data.input_ids, data.attention_mask), logits[:1], atol=1e-5)
    padded = data.attention_mask.clone()
    ids = data.input_ids.clone()
    ids[~padded] = 5                                     # words behind the padding change nothing
    assert torch.allclose(net(data.images, ids, padded), logits, atol=1e-5)


@pytest.mark.parametrize("name", ["shapes-clip", "shapes-detr"])
def test_the_recipe_trains_saves_and_scores(name, tmp_path, monkeypatch):
    """Two steps of the recipe end to end (scored on 8 test images): the checkpoint loads back, its card is written
    and the metrics are the recipe's."""
    import shutil
    from dataclasses import replace

    from vitx.checkpoint import read_checkpoint
    from vitx.training import RECIPES, train
    from vitx.zoo import ZOO_DIR

    module = {"shapes-clip": "vitx.training.clip", "shapes-detr": "vitx.training.detr"}[name]
    monkeypatch.setattr(f"{module}.TEST_IMAGES", 8)
    recipe = replace(RECIPES[name], steps=2)
    shutil.copy(ZOO_DIR / f"{recipe.start}.safetensors", tmp_path)
    metrics = train(name, out_dir=tmp_path, recipe=recipe, batch_size=4, progress=False)
    expected = ({"accuracy", "shapes_accuracy", "image_to_text_r1", "text_to_image_r1"} if name == "shapes-clip" else
                {"ap", "ap50", "ap75"})
    assert set(metrics) == expected and all(0 <= v <= 1 for v in metrics.values())
    state, meta = read_checkpoint(tmp_path / f"{name}.safetensors")
    assert meta["kind"] == recipe.kind and meta["metrics"] == metrics and meta["steps"] == 2
    assert (tmp_path / f"{name}.md").read_text().startswith(f"# {name}")
    net = create_model(recipe.arch)
    net.load_state_dict(state)
