"""The embedded tokenizer, FrozenTextEncoder (shapes, freezing, cache, loading) and mini CLIP."""

from __future__ import annotations

import math
import shutil

import mini_clip
import numpy as np
import pytest
import torch

from idruid.data import shapes
from idruid.models.text_encoder import (
    EMBEDDED_TOKENIZER,
    FrozenTextEncoder,
    TextEmbeddings,
    load_embedded_text_encoder,
    load_tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def encoder(tokenizer):
    model = mini_clip.build_text_model(tokenizer, seed=0, num_layers=1)
    return FrozenTextEncoder(model, tokenizer, max_length=16)


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_files_and_special_tokens(tokenizer):
    assert {"vocab.json", "merges.txt"} <= {p.name for p in EMBEDDED_TOKENIZER.iterdir()}
    vocab = tokenizer.get_vocab()
    assert tokenizer.bos_token == "<|startoftext|>" and tokenizer.eos_token == "<|endoftext|>"
    assert vocab["!"] == 0 and vocab["!</w>"] == 256  # CLIP's byte-level base symbols first
    assert tokenizer.bos_token_id == len(tokenizer) - 2 and tokenizer.eos_token_id == len(tokenizer) - 1


def test_common_words_are_single_tokens(tokenizer):
    ids = tokenizer("a photo of a red circle")["input_ids"]
    assert len(ids) == 8
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == [
        "a</w>",
        "photo</w>",
        "of</w>",
        "a</w>",
        "red</w>",
        "circle</w>",
    ]


def test_caption_vocabulary_is_single_tokens(tokenizer):
    split = [w for w in shapes.caption_words() if len(tokenizer.tokenize(w)) != 1]
    assert split == []


def test_unknown_words_fall_back_and_round_trip(tokenizer):
    text = "a zxqvw blorptastic gizmo"
    tokens = tokenizer.tokenize(text)
    assert len(tokens) > 4 and "zxqvw</w>" not in tokens
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.unk_token_id not in ids[1:-1]


# ----------------------------------------------------------------------------- encoder


def test_encode_shapes_and_mask(encoder):
    out = encoder.encode(["a red circle", "a striped blue square with thin horizontal bands"])
    assert isinstance(out, TextEmbeddings)
    assert out.hidden.shape == (2, 16, encoder.hidden_size)
    assert out.pooled.shape == (2, encoder.hidden_size)
    assert out.mask.shape == (2, 16) and out.mask.dtype == torch.bool
    assert out.mask[0].sum() == 5  # bos a red circle eos
    assert not out.hidden.requires_grad and not out.pooled.requires_grad


def test_frozen_no_trainable_params_always_eval(encoder):
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not encoder.model.training


def test_truncates_to_max_length(encoder):
    out = encoder.encode([" ".join(["red"] * 50)], use_cache=False)
    assert out.hidden.shape[1] == 16 and bool(out.mask.all())


def test_cache_matches_uncached(encoder):
    encoder.clear_cache()
    texts = ["a red circle", "a blue square", "a red circle"]
    first = encoder.encode(texts)
    assert len(encoder._cache) == 2
    torch.testing.assert_close(first.hidden[0], first.hidden[2])
    again = encoder.encode(["a blue square", "a red circle"])
    torch.testing.assert_close(again.pooled, first.pooled[[1, 0]])
    plain = encoder.encode(texts, use_cache=False)
    for a, b in zip((first.hidden, first.pooled), (plain.hidden, plain.pooled), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(first.mask, plain.mask)


def test_cache_size_is_bounded(tokenizer):
    model = mini_clip.build_text_model(tokenizer, seed=0, num_layers=1)
    small = FrozenTextEncoder(model, tokenizer, max_length=8, cache_size=2)
    out = small.encode(["a", "b", "c", "a"])
    assert out.pooled.shape[0] == 4 and len(small._cache) == 2


def test_pooled_is_eos_state(encoder):
    out = encoder.encode(["a red circle"], use_cache=False)
    torch.testing.assert_close(out.pooled[0], out.hidden[0, 4])


@pytest.mark.parametrize("layout", ["flat", "diffusers"])
def test_from_pretrained_layouts(tmp_path, tokenizer, encoder, layout):
    if layout == "flat":
        mini_clip.save_text_encoder(encoder.model, tmp_path)
    else:
        encoder.model.save_pretrained(str(tmp_path / "text_encoder"))
        shutil.copytree(EMBEDDED_TOKENIZER, tmp_path / "tokenizer")
    loaded = FrozenTextEncoder.from_pretrained(tmp_path, max_length=16)
    texts = ["a dotted green triangle"]
    torch.testing.assert_close(loaded.encode(texts).hidden, encoder.encode(texts, use_cache=False).hidden)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        FrozenTextEncoder.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "text_encoder").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json.*vocab\.json"):
        FrozenTextEncoder.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- mini CLIP


def test_clip_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.3, 1.5, 0.2], [-0.4, 0.1, 3.0]])
    image_to_text = [
        -math.log(math.exp(logits[i, i]) / sum(math.exp(v) for v in logits[i])) for i in range(3)
    ]
    text_to_image = [
        -math.log(math.exp(logits[j, j]) / sum(math.exp(v) for v in logits[:, j])) for j in range(3)
    ]
    expected = (sum(image_to_text) / 3 + sum(text_to_image) / 3) / 2
    assert mini_clip.clip_loss(logits).item() == pytest.approx(expected, rel=1e-6)
    eye = torch.eye(3, dtype=torch.bool)
    assert mini_clip.clip_loss(logits, eye).item() == pytest.approx(expected, rel=1e-6)


def test_compatible_pairs():
    red_circle = mini_clip.Attrs("red", "circle", "solid")
    blue_square = mini_clip.Attrs("blue", "square", "dotted")
    captions = [mini_clip.Attrs("red", None, None), mini_clip.Attrs(None, "square", None), red_circle]
    expected = torch.tensor([[True, False, True], [False, True, False]])
    assert torch.equal(mini_clip.compatible([red_circle, blue_square], captions), expected)


def test_crop_holds_whole_shape():
    crops, attrs = mini_clip.crop_bank(np.random.default_rng(0), 8)
    assert crops.shape == (8, 3, 16, 16) and len(attrs) == 8
    border = torch.cat([crops[:, :, 0], crops[:, :, -1], crops[:, :, :, 0], crops[:, :, :, -1]], dim=-1)
    background = shapes.image_to_tensor(np.full((1, 1, 3), shapes.BACKGROUND, np.uint8))[:, 0, 0]
    # most border pixels are background: the window is centred on the shape
    assert (border == background[None, :, None]).all(1).float().mean() > 0.5


def test_mini_clip_smoke(tmp_path):
    metrics = mini_clip.pretrain_text_encoder(
        tmp_path,
        steps=5,
        batch_size=16,
        num_layers=1,
        bank_size=64,
        eval_size=32,
        probe_steps=2,
        progress=False,
    )
    assert all(math.isfinite(v) for v in metrics.values())
    assert 0.0 <= metrics["random/probe_retrieval_short"] <= 1.0
    loaded = FrozenTextEncoder.from_pretrained(tmp_path)
    assert loaded.max_length == 40 and loaded.encode(["a red circle"]).pooled.shape == (1, 64)


def test_with_projection_pools_text_embeds(tmp_path, tokenizer):
    from transformers import CLIPTextModelWithProjection

    config = mini_clip.tiny_text_config(tokenizer, num_layers=1)
    config.projection_dim = 24
    CLIPTextModelWithProjection(config).save_pretrained(str(tmp_path / "text_encoder"))
    shutil.copytree(EMBEDDED_TOKENIZER, tmp_path / "tokenizer")
    loaded = FrozenTextEncoder.from_pretrained(tmp_path)
    assert loaded.pooled_size == 24 and loaded.encode(["a red circle"]).pooled.shape == (1, 24)


def test_embedded_encoder_loads():
    encoder = load_embedded_text_encoder()
    assert encoder.max_length == 40 and encoder.hidden_size == 64
    out = encoder.encode(["a red circle", "a red disc with small dots", "a blue triangle"])
    pooled = torch.nn.functional.normalize(out.pooled, dim=-1)
    # the pretrained text space puts the two red circles closer than a red and a blue shape
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2]


def test_a_folder_of_another_pipeline_is_refused_by_name(tmp_path):
    """A FLUX.1 folder has text_encoder/ (CLIP-L) too: it must not load as an SD1.5 CLIP silently."""
    import json

    from idruid.models.text_encoder import load_text_encoder

    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(FileNotFoundError, match="is a FluxPipeline folder"):
        load_text_encoder(tmp_path)


def test_each_backbone_declares_the_text_encoders_of_its_base_folder():
    from idruid.models.base import LayoutModel
    from idruid.models.sd3 import SD3LayoutModel, sd3_text_encoders
    from idruid.models.sd3_druid import DruidLayoutModel
    from idruid.models.sd15 import LayoutUNetModel
    from idruid.models.text_encoder import FrozenTextEncoder

    assert SD3LayoutModel.base_text_encoder is sd3_text_encoders
    assert DruidLayoutModel.base_text_encoder is sd3_text_encoders
    assert LayoutUNetModel.base_text_encoder == FrozenTextEncoder.from_pretrained
    assert LayoutModel.base_text_encoder is None  # a backbone that declares none: told from the folder
