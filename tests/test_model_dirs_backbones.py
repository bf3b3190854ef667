"""Tiny SD3 and SD1.5 diffusers folders through the user-facing loaders: the backbones' folder
checks (models.sd3.SD3_FOLDER, models.sd15.SD15_FOLDER, on model_dirs' piece lists),
load_text_encoder (SD1.5's single CLIP, SD3's three encoders, embedded, flat) and load_codec."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tiny_models import CLIP_MAX_LENGTH, build_tiny_sd3_folder, build_tiny_sd15_folder
from transformers import CLIPTextModel, CLIPTokenizer

from idruid.config import ModelConfig
from idruid.model_dirs import missing_components
from idruid.models.sd3 import SD3_FOLDER
from idruid.models.sd3_text import SD3TextEncoder
from idruid.models.sd15 import SD15_FOLDER
from idruid.models.text_encoder import EMBEDDED_TEXT_ENCODER, FrozenTextEncoder, load_text_encoder
from idruid.models.vae import VaeCodec, load_codec

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a red circle", "a photo of a dog on the left"]


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    return build_tiny_sd3_folder(tmp_path_factory.mktemp("sd3") / "sd3")


@pytest.fixture(scope="module")
def sd15_dir(tmp_path_factory):
    return build_tiny_sd15_folder(tmp_path_factory.mktemp("sd15") / "sd15")


# ----------------------------------------------------------------------------- folder checks


def test_complete_folders_pass(sd3_dir, sd15_dir):
    assert SD3_FOLDER.check(str(sd3_dir)) == sd3_dir
    assert SD15_FOLDER.check(sd15_dir) == sd15_dir
    assert missing_components(sd3_dir, SD3_FOLDER.components()) == []


def test_sd15_folder_lacks_exactly_the_sd3_only_parts(sd15_dir):
    expected = [
        f"{name}/ (folder)"
        for name in ("transformer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")
    ]
    assert missing_components(sd15_dir, SD3_FOLDER.components()) == expected
    with pytest.raises(FileNotFoundError, match="not a complete SD3") as info:
        SD3_FOLDER.check(sd15_dir)
    assert all(piece in str(info.value) for piece in expected)


def test_a_config_is_checked_for_the_pieces_it_reads(sd15_dir, tmp_path):
    """The network's pieces always, the VAE only at codec=vae, the text encoders only at
    text_encoder=base: a folder of just the UNet and its scheduler is enough for the embedded ones."""
    bare = tmp_path / "unet-only"
    for piece in ("unet", "scheduler"):
        shutil.copytree(sd15_dir / piece, bare / piece)
    embedded = ModelConfig(backbone="sd15", base_model=str(bare))
    assert SD15_FOLDER.check(bare, embedded) == bare
    with pytest.raises(FileNotFoundError, match=r"missing vae/ \(folder\)$"):
        SD15_FOLDER.check(bare, ModelConfig(backbone="sd15", base_model=str(bare), codec="vae"))
    with pytest.raises(FileNotFoundError, match=r"missing text_encoder/ \(folder\); tokenizer/ \(folder\)$"):
        SD15_FOLDER.check(bare, ModelConfig(backbone="sd15", base_model=str(bare), text_encoder="base"))


def test_every_missing_piece_is_named(sd15_dir, tmp_path):
    broken = shutil.copytree(sd15_dir, tmp_path / "sd15")
    shutil.rmtree(broken / "scheduler")
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (broken / "unet" / "config.json").unlink()
    (broken / "tokenizer" / "vocab.json").unlink()
    assert missing_components(broken, SD15_FOLDER.components()) == [
        "unet/config.json",
        "scheduler/ (folder)",
        "vae/weights (one of diffusion_pytorch_model.safetensors, "
        "diffusion_pytorch_model.safetensors.index.json, diffusion_pytorch_model.bin)",
        "tokenizer/vocab.json (one of vocab.json, tokenizer.json)",
    ]
    every = r"unet/config\.json; scheduler/ \(folder\); vae/weights .*vocab"
    with pytest.raises(FileNotFoundError, match=every):
        SD15_FOLDER.check(broken)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SD15_FOLDER.check(tmp_path / "nowhere")


def test_tiny_folders_have_the_documented_configs(sd3_dir, sd15_dir):
    unet = json.loads((sd15_dir / "unet" / "config.json").read_text())
    assert unet["block_out_channels"] == [32, 64, 64] and unet["cross_attention_dim"] == 32
    assert unet["down_block_types"] == ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    assert unet["up_block_types"] == ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    scheduler = json.loads((sd15_dir / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "PNDMScheduler"
    sd15_schedule = ("scaled_linear", 0.00085, 0.012, 1000, 1)
    keys = ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps", "steps_offset")
    assert tuple(scheduler[k] for k in keys) == sd15_schedule
    flow = json.loads((sd3_dir / "scheduler" / "scheduler_config.json").read_text())
    assert flow["_class_name"] == "FlowMatchEulerDiscreteScheduler" and flow["shift"] == 3.0
    index = json.loads((sd3_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    assert {p.name for p in (sd15_dir / "tokenizer").iterdir()} >= {"vocab.json", "merges.txt"}


# ----------------------------------------------------------------------------- text encoders


def test_sd15_clip_is_last_hidden_state_and_pooler_output(sd15_dir):
    encoder = load_text_encoder(str(sd15_dir))
    assert isinstance(encoder, FrozenTextEncoder)
    assert encoder.max_length == CLIP_MAX_LENGTH and encoder.hidden_size == encoder.pooled_size == 32
    model = CLIPTextModel.from_pretrained(sd15_dir / "text_encoder")
    tokens = CLIPTokenizer.from_pretrained(sd15_dir / "tokenizer")(
        PROMPTS, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        raw = model(tokens.input_ids)
    out = encoder.encode(PROMPTS, use_cache=False)
    torch.testing.assert_close(out.hidden, raw.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooled, raw.pooler_output, atol=1e-5, rtol=1e-5)
    assert out.mask.sum(1).tolist() == [5, 10]  # <bos> words <eos>


def test_sd15_matches_diffusers_encode_prompt(sd15_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd15_dir)
    with torch.no_grad():
        hidden, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, do_classifier_free_guidance=False)
    out = load_text_encoder(sd15_dir).encode(PROMPTS)
    torch.testing.assert_close(out.hidden, hidden, atol=1e-5, rtol=1e-5)


def test_load_text_encoder_dispatch(sd3_dir, tmp_path):
    assert isinstance(load_text_encoder(sd3_dir, t5_max_length=8), SD3TextEncoder)
    assert isinstance(load_text_encoder("embedded"), FrozenTextEncoder)
    assert isinstance(load_text_encoder(str(EMBEDDED_TEXT_ENCODER)), FrozenTextEncoder)  # flat folder
    # an SD3 folder whose T5 parts are gone is still read as SD3, and the error names them
    no_t5 = shutil.copytree(sd3_dir, tmp_path / "no_t5", ignore=shutil.ignore_patterns("*_3"))
    with pytest.raises(FileNotFoundError, match=r"text_encoder_3/ \(folder\); tokenizer_3/ \(folder\)"):
        load_text_encoder(no_t5)
    with pytest.raises(FileNotFoundError, match="neither 'embedded' nor an existing folder"):
        load_text_encoder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no text encoder"):
        load_text_encoder(tmp_path / "empty")


# ----------------------------------------------------------------------------- codecs and backbones


def test_codecs_of_both_folders(sd3_dir, sd15_dir):
    sd3, sd15 = load_codec(str(sd3_dir)), load_codec(sd15_dir)
    assert isinstance(sd3, VaeCodec) and isinstance(sd15, VaeCodec)
    assert (sd3.latent_channels, sd3.scaling_factor, sd3.shift_factor) == (16, 1.5305, 0.0609)
    assert (sd15.latent_channels, sd15.scaling_factor, sd15.shift_factor) == (4, 0.18215, 0.0)
    assert sd3.downsample == sd15.downsample == 2


def test_sd3_pieces_fit_the_transformer(sd3_dir):
    """The encoder's widths and the codec's latents are what the folder's MM-DiT takes."""
    from diffusers import SD3Transformer2DModel

    transformer = SD3Transformer2DModel.from_pretrained(sd3_dir / "transformer")
    text = load_text_encoder(sd3_dir, t5_max_length=8).encode(PROMPTS)
    latents = load_codec(sd3_dir).encode(torch.zeros(2, 3, 16, 16))
    with torch.no_grad():
        out = transformer(
            hidden_states=latents,
            encoder_hidden_states=text.hidden,
            pooled_projections=text.pooled,
            timestep=torch.tensor([500.0, 500.0]),
        ).sample
    assert out.shape == latents.shape and torch.isfinite(out).all()


def test_sd15_pieces_fit_the_unet(sd15_dir):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(sd15_dir / "unet")
    text = load_text_encoder(sd15_dir).encode(PROMPTS)
    latents = load_codec(sd15_dir).encode(torch.zeros(2, 3, 16, 16))
    with torch.no_grad():
        out = unet(latents, torch.tensor([10, 900]), encoder_hidden_states=text.hidden).sample
    assert out.shape == latents.shape and torch.isfinite(out).all()
