"""SD3TextEncoder on a tiny random SD3 folder: diffusers' encode_prompt formula, mask, cache, no T5."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from tiny_models import (
    CLIP_MAX_LENGTH,
    build_tiny_sd3_folder,
    tiny_clip,
    tiny_clip_tokenizer,
    tiny_t5_tokenizer,
)
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from idruid.models.sd3_text import SD3TextEncoder
from idruid.models.text_encoder import TextEmbeddings, load_text_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

T5_LENGTH = 16
PROMPTS = ["a red circle", "a photo of a dog on the left"]
# hand-counted tokens: CLIP <bos> words <eos>; T5 words </s> (every word is one T5 piece)
CLIP_TOKENS, T5_TOKENS = [5, 10], [4, 9]
CLIP_L, CLIP_G, T5_WIDTH = 32, 48, 96  # tiny widths of build_tiny_sd3_folder
POOLED = 24 + 40  # CLIP-L and CLIP-G projections


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    return build_tiny_sd3_folder(tmp_path_factory.mktemp("sd3") / "sd3-medium")


@pytest.fixture(scope="module")
def encoder(sd3_dir):
    return load_text_encoder(sd3_dir, t5_max_length=T5_LENGTH)


def manual_embeddings(sd3_dir, prompts: list[str]) -> TextEmbeddings:
    """The SD3 formula written out from the three raw models: penultimate CLIP states side by side,
    zero columns up to T5's width, T5's states after them; pooled = both CLIP projections."""
    clip_states, pooled, clip_masks = [], [], []
    for model_dir, tok_dir in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        model = CLIPTextModelWithProjection.from_pretrained(sd3_dir / model_dir)
        tokens = CLIPTokenizer.from_pretrained(sd3_dir / tok_dir)(
            prompts, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            out = model(tokens.input_ids, output_hidden_states=True)
        clip_states.append(out.hidden_states[len(out.hidden_states) - 2])
        pooled.append(out.text_embeds)
        clip_masks.append(tokens.attention_mask.bool())
    t5 = T5EncoderModel.from_pretrained(sd3_dir / "text_encoder_3")
    t5_tokens = T5TokenizerFast.from_pretrained(sd3_dir / "tokenizer_3")(
        prompts, padding="max_length", max_length=T5_LENGTH, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        t5_states = t5(t5_tokens.input_ids).last_hidden_state
    batch = len(prompts)
    hidden = torch.zeros(batch, CLIP_MAX_LENGTH + T5_LENGTH, T5_WIDTH)
    hidden[:, :CLIP_MAX_LENGTH, :CLIP_L] = clip_states[0]
    hidden[:, :CLIP_MAX_LENGTH, CLIP_L : CLIP_L + CLIP_G] = clip_states[1]
    hidden[:, CLIP_MAX_LENGTH:] = t5_states
    mask = torch.cat([clip_masks[0], t5_tokens.attention_mask.bool()], dim=1)
    return TextEmbeddings(hidden=hidden, pooled=torch.cat(pooled, dim=1), mask=mask)


def test_interface_sizes_and_frozen(encoder):
    assert isinstance(encoder, SD3TextEncoder)
    assert encoder.hidden_size == T5_WIDTH and encoder.pooled_size == POOLED
    assert encoder.max_length == CLIP_MAX_LENGTH + T5_LENGTH
    assert encoder.device == torch.device("cpu")
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not encoder.t5.training and not encoder.clip_g.training


def test_matches_manual_computation(sd3_dir, encoder):
    out = encoder.encode(PROMPTS, use_cache=False)
    expected = manual_embeddings(sd3_dir, PROMPTS)
    assert out.hidden.shape == (2, CLIP_MAX_LENGTH + T5_LENGTH, T5_WIDTH)
    assert out.pooled.shape == (2, POOLED) and out.mask.dtype == torch.bool
    torch.testing.assert_close(out.hidden, expected.hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooled, expected.pooled, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.mask, expected.mask)
    assert torch.all(out.hidden[:, :CLIP_MAX_LENGTH, CLIP_L + CLIP_G :] == 0)  # the zero padding
    assert out.hidden[:, :CLIP_MAX_LENGTH, CLIP_L + CLIP_G - 1].abs().min() > 0


@contextmanager
def t5_calls(encoder: SD3TextEncoder) -> Iterator[list[int]]:
    """Counts T5's forward passes (one element per call), from an empty cache."""
    calls: list[int] = []
    hook = encoder.t5.register_forward_hook(lambda *_: calls.append(1))
    encoder.clear_cache()
    try:
        yield calls
    finally:
        hook.remove()
        encoder.clear_cache()


@pytest.mark.parametrize("length", [0, 5, CLIP_MAX_LENGTH, CLIP_MAX_LENGTH + 3])
def test_only_the_encoders_the_used_tokens_need_run(sd3_dir, encoder, length):
    """Instance captions read ``length`` tokens: T5 runs only when they reach past CLIP's 77."""
    expected = manual_embeddings(sd3_dir, PROMPTS)
    with t5_calls(encoder) as calls:
        out = encoder.encode(PROMPTS, length=length)
        assert torch.equal(encoder.encode(PROMPTS, length=length).hidden, out.hidden)  # from the cache
    assert len(calls) == (length > CLIP_MAX_LENGTH)
    assert out.hidden.shape == (2, length, T5_WIDTH) and out.mask.shape == (2, length)
    torch.testing.assert_close(out.hidden, expected.hidden[:, :length], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooled, expected.pooled, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.mask, expected.mask[:, :length])


@pytest.mark.parametrize("caption_tokens", [0, 4])
def test_instance_captions_skip_t5_unless_their_tokens_need_it(sd3_dir, encoder, caption_tokens):
    """encode_text: T5 reads the prompts once; the captions, only CLIP (their tokens are CLIP's)."""
    from idruid.config import ModelConfig
    from idruid.layout import Instance, Layout
    from idruid.models.sd3 import SD3LayoutModel

    config = ModelConfig(
        idm_hidden=16, geometry_rank=4, resolution=16, network=dict(num_layers=1, num_heads=2, head_dim=16),
        prompt_max_length=CLIP_MAX_LENGTH + T5_LENGTH, caption_max_length=caption_tokens,
    )  # fmt: skip
    model = SD3LayoutModel(config, text_encoder=encoder)
    captions = ["a red circle", "a blue square"]
    layout = Layout(PROMPTS[1], tuple(Instance(c, (0.1, 0.1, 0.5, 0.5)) for c in captions))
    with t5_calls(encoder) as calls:
        cond = model.encode_text([layout])
    assert len(calls) == 1  # the prompt's
    expected = manual_embeddings(sd3_dir, captions)
    torch.testing.assert_close(cond.caption_pooled[0, :2], expected.pooled, atol=1e-5, rtol=1e-5)
    hidden = expected.hidden[:, :caption_tokens]
    torch.testing.assert_close(cond.caption_hidden[0, :2], hidden, atol=1e-5, rtol=1e-5)
    assert torch.equal(cond.caption_mask[0, :2], expected.mask[:, :caption_tokens])
    prompt = manual_embeddings(sd3_dir, [PROMPTS[1]])
    torch.testing.assert_close(cond.prompt_hidden, prompt.hidden, atol=1e-5, rtol=1e-5)


def test_mask_counts_real_tokens(encoder):
    mask = encoder.encode(PROMPTS, use_cache=False).mask
    assert mask[:, :CLIP_MAX_LENGTH].sum(1).tolist() == CLIP_TOKENS
    assert mask[:, CLIP_MAX_LENGTH:].sum(1).tolist() == T5_TOKENS
    for row, (clip, t5) in enumerate(zip(CLIP_TOKENS, T5_TOKENS, strict=True)):  # real tokens come first
        assert mask[row, :clip].all() and mask[row, CLIP_MAX_LENGTH : CLIP_MAX_LENGTH + t5].all()


def test_matches_diffusers_encode_prompt(sd3_dir, encoder):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(sd3_dir)
    with torch.no_grad():
        hidden, _, pooled, _ = pipe.encode_prompt(
            PROMPTS, None, None, do_classifier_free_guidance=False, max_sequence_length=T5_LENGTH
        )
    out = encoder.encode(PROMPTS, use_cache=False)
    torch.testing.assert_close(out.hidden, hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooled, pooled, atol=1e-5, rtol=1e-5)


def test_cache_returns_identical_rows(encoder):
    encoder.clear_cache()
    first = encoder.encode([PROMPTS[0], PROMPTS[1], PROMPTS[0]])
    assert len(encoder._cache) == 2
    assert torch.equal(first.hidden[0], first.hidden[2])
    again = encoder.encode([PROMPTS[1], PROMPTS[0]])
    for a, b in ((again.hidden, first.hidden), (again.pooled, first.pooled), (again.mask, first.mask)):
        assert torch.equal(a, b[[1, 0]])
    plain = encoder.encode(PROMPTS, use_cache=False)
    torch.testing.assert_close(plain.hidden, first.hidden[:2], atol=1e-5, rtol=1e-5)
    encoder.clear_cache()
    assert len(encoder._cache) == 0


def test_truncates_long_prompts(encoder):
    out = encoder.encode([" ".join(["red"] * 100)], use_cache=False)
    assert out.hidden.shape[1] == encoder.max_length and bool(out.mask.all())


def test_default_t5_length(sd3_dir):
    encoder = SD3TextEncoder.from_pretrained(sd3_dir, cache_size=0)
    assert encoder.max_length == CLIP_MAX_LENGTH + 256 and encoder.cache_size == 0
    assert encoder.encode(["a dog"]).hidden.shape == (1, CLIP_MAX_LENGTH + 256, T5_WIDTH)


def test_without_t5_zeros_in_its_place(sd3_dir, encoder, tmp_path):
    full = encoder.encode(PROMPTS, use_cache=False)
    no_t5 = SD3TextEncoder.from_pretrained(sd3_dir, t5_max_length=T5_LENGTH, use_t5=False)
    assert no_t5.t5 is None and no_t5.hidden_size == T5_WIDTH
    out = no_t5.encode(PROMPTS)
    torch.testing.assert_close(out.hidden[:, :CLIP_MAX_LENGTH], full.hidden[:, :CLIP_MAX_LENGTH])
    torch.testing.assert_close(out.pooled, full.pooled)
    assert torch.all(out.hidden[:, CLIP_MAX_LENGTH:] == 0) and not out.mask[:, CLIP_MAX_LENGTH:].any()
    # with no text_encoder_3/ at all the width comes from transformer/config.json's joint_attention_dim
    stripped = shutil.copytree(sd3_dir, tmp_path / "sd3", ignore=shutil.ignore_patterns("*_3"))
    assert SD3TextEncoder.from_pretrained(stripped, use_t5=False).hidden_size == T5_WIDTH
    with pytest.raises(FileNotFoundError, match=r"text_encoder_3/ \(folder\); tokenizer_3/ \(folder\)"):
        SD3TextEncoder.from_pretrained(stripped)


def test_missing_pieces_are_named(sd3_dir, tmp_path):
    broken = shutil.copytree(sd3_dir, tmp_path / "sd3")
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(FileNotFoundError, match=r"missing text_encoder_2/ \(folder\)$"):
        load_text_encoder(broken)
    (broken / "text_encoder_3" / "model.safetensors").unlink()
    (broken / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_text_encoder(broken)
    message = str(info.value)
    for piece in ("text_encoder_2/ (folder)", "text_encoder_3/weights", "tokenizer/merges.txt"):
        assert piece in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SD3TextEncoder.from_pretrained(tmp_path / "nowhere")


def test_rejects_inconsistent_models():
    tokenizer = tiny_clip_tokenizer()
    with_projection = tiny_clip(tokenizer, hidden=32, projection=16)
    without_projection = tiny_clip(tokenizer, hidden=32, projection=None)
    t5_tokenizer = tiny_t5_tokenizer()
    with pytest.raises(TypeError, match="CLIP-G must be a CLIPTextModelWithProjection"):
        SD3TextEncoder(with_projection, tokenizer, without_projection, tokenizer, None, None, t5_width=96)
    with pytest.raises(ValueError, match="width 64 exceeds the T5 width 48"):
        SD3TextEncoder(with_projection, tokenizer, with_projection, tokenizer, None, None, t5_width=48)
    with pytest.raises(ValueError, match="t5_width"):
        SD3TextEncoder(with_projection, tokenizer, with_projection, tokenizer, None, None)
    with pytest.raises(ValueError, match="or neither"):
        SD3TextEncoder(
            with_projection, tokenizer, with_projection, tokenizer, None, t5_tokenizer, t5_width=96
        )


def test_dtype_applies_to_all_three_models(sd3_dir, encoder):
    half = SD3TextEncoder.from_pretrained(sd3_dir, t5_max_length=T5_LENGTH, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    row = (CLIP_MAX_LENGTH + T5_LENGTH) * (T5_WIDTH + 1) + POOLED  # hidden + mask + pooled numbers
    assert (encoder.cache_size, half.cache_size) == (256 * 2**20 // (4 * row), 256 * 2**20 // (2 * row))
    out, full = half.encode(PROMPTS), encoder.encode(PROMPTS, use_cache=False)
    assert out.hidden.dtype == out.pooled.dtype == torch.bfloat16
    torch.testing.assert_close(out.pooled.float(), full.pooled, atol=0.1, rtol=0.05)
