"""The FLUX.1 backbone (models/flux.py) on tiny FLUX.1-dev and schnell folders: what FluxPipeline
does (packing, rotary ids, text encoding, time grid, distilled guidance, VAE factors) is what the
model does, the processors are diffusers' attention plus the layout branch, and the model trains,
samples, runs the RL stage, resumes, round-trips its checkpoint and runs in IDruidPipeline."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
from PIL import Image
from safetensors.torch import load_file
from tiny_models import FLUX_DEV_SCHEDULER, FLUX_SCHNELL_SCHEDULER, build_tiny_flux_folder

from idruid.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_meta, save_checkpoint
from idruid.cli import main
from idruid.conditioning import Conditioning
from idruid.config import ConfigError, ModelConfig, RLConfig, TrainConfig, load_config
from idruid.layout import Instance, Layout, save_layouts
from idruid.losses import idc_loss
from idruid.models import build_model
from idruid.models.flux import (
    FluxLayoutJointProcessor,
    FluxLayoutModel,
    FluxLayoutSingleProcessor,
    FluxPlainProcessor,
    FluxProcess,
    image_ids,
    pack_latents,
    text_ids,
    unpack_latents,
)
from idruid.models.flux_text import FluxTextEncoder
from idruid.pipeline import IDruidPipeline
from idruid.rl.rollout import policy_log_probs, rollout, rollout_settings
from idruid.sampling import SamplingSettings, guidance_conditioning, sample, to_uint8
from idruid.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = ("dev", "schnell")  # guidance embedding and resolution shift, or neither
TOKENS = 16  # T5 tokens of a prompt (FluxPipeline's max_sequence_length)
SCENES = [
    Layout("a red circle and a blue square", (
        Instance("a red circle", (0.05, 0.1, 0.45, 0.5)),
        Instance("a blue square", (0.5, 0.5, 0.95, 0.9)),
    ), seed=3),
    Layout("a green triangle", (Instance("a green triangle", (0.2, 0.2, 0.8, 0.7)),), seed=4),
]  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flux")
    return {
        "dev": build_tiny_flux_folder(root / "dev", guidance_embeds=True),
        "schnell": build_tiny_flux_folder(root / "schnell", guidance_embeds=False),
    }


def config_for(folder: Path, **extra) -> ModelConfig:
    """What a user writes for a real FLUX.1 folder (32 px: 16x16 latents, 8x8 tokens)."""
    return ModelConfig(
        backbone="flux", base_model=str(folder), text_encoder="base", codec="vae",
        prompt_max_length=TOKENS, idm_hidden=16, geometry_rank=8, **extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def models(folders) -> dict[str, FluxLayoutModel]:
    torch.manual_seed(0)
    return {name: build_model(config_for(folder)).eval() for name, folder in folders.items()}


def trained_branches(model: FluxLayoutModel, std: float = 0.3) -> FluxLayoutModel:
    """The model with its zero-initialised layout residuals set to random weights."""
    for processor in model.transformer.attn_processors.values():
        if isinstance(processor, torch.nn.Module):
            torch.nn.init.normal_(processor.to_out.weight, std=std)
    return model


# ----------------------------------------------------------------------------- what FluxPipeline does


def test_packing_and_rotary_ids_are_fluxpipelines():
    latents = torch.randn(2, 16, 6, 10)
    packed = pack_latents(latents)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(latents, 2, 16, 6, 10), rtol=0, atol=0)
    assert packed.shape == (2, 15, 64)
    # FluxPipeline unpacks image sizes: vae_scale_factor 8 and 48x80 px are these 6x10 latents
    torch.testing.assert_close(unpack_latents(packed, 6, 10), FluxPipeline._unpack_latents(packed, 48, 80, 8))
    torch.testing.assert_close(unpack_latents(packed, 6, 10), latents, rtol=0, atol=0)
    expected = FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32)
    torch.testing.assert_close(image_ids((3, 5)), expected, rtol=0, atol=0)
    assert text_ids(7).shape == (7, 3) and not text_ids(7).any()
    with pytest.raises(ValueError, match="2x2 latent pixels"):
        pack_latents(torch.randn(1, 16, 5, 4))


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_model_samples_what_fluxpipeline_samples(folders, models, variant):
    """With the layout branch untrained (its zero residual), idruid's sampling loop on the model
    gives FluxPipeline's latents and images for the same noise: text encoding, packing, rotary
    ids, timestep and guidance scaling, time grid (mu), Euler direction and VAE factors at once."""
    model, steps = models[variant], 3
    pipe = FluxPipeline.from_pretrained(folders[variant])
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(5))
    guidance = 5.0 if variant == "dev" else None  # not FluxPipeline's default 3.5: it must arrive
    settings = SamplingSettings(steps=steps, cfg=1.0, layout_fraction=1.0, guidance=guidance)
    prompts = [scene.prompt for scene in SCENES]
    common = dict(num_inference_steps=steps, guidance_scale=guidance or 3.5, height=32, width=32,
                  max_sequence_length=TOKENS, latents=pack_latents(noise))  # fmt: skip
    with torch.no_grad():
        latents = sample(model, SCENES, settings, x_init=noise, decode=False)
        theirs = pipe(prompts, output_type="latent", **common).images
        torch.testing.assert_close(pack_latents(latents), theirs, rtol=1e-4, atol=1e-5)
        images = sample(model, SCENES, settings, x_init=noise)
        theirs = pipe(prompts, output_type="pt", **common).images
    torch.testing.assert_close((images + 1) / 2, theirs, rtol=1e-4, atol=1e-5)
    assert (model.codec.scaling_factor, model.codec.shift_factor) == (0.3611, 0.1159)


def test_text_encoder_is_fluxpipelines(folders):
    encoder = FluxTextEncoder.from_pretrained(folders["dev"])
    pipe = FluxPipeline.from_pretrained(folders["dev"])
    texts = ["a red circle and a blue square", ""]
    out = encoder.encode(texts, length=TOKENS)
    hidden, pooled, _ = pipe.encode_prompt(texts, max_sequence_length=TOKENS)
    torch.testing.assert_close(out.hidden, hidden, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.pooled, pooled, rtol=1e-5, atol=1e-6)
    assert (encoder.hidden_size, encoder.pooled_size, encoder.max_length) == (48, 32, 512)
    # T5 reads its padding: a prompt read at 8 tokens is not the head of one read at 16
    assert not torch.allclose(encoder.encode(texts[:1], length=8).hidden, out.hidden[:1, :8], atol=1e-4)
    # instance captions at caption_max_length=0: CLIP's pooled vector only, no T5 token
    caption = encoder.encode(["a red circle"], length=0)
    assert caption.hidden.shape == (1, 0, 48)
    torch.testing.assert_close(caption.pooled, out.pooled[:1] * 0 + pipe.encode_prompt(["a red circle"])[1])


def test_the_vae_factors_apply_both_ways_as_flux_uses_them(models):
    """Decoding (FluxPipeline): z = latents / 0.3611 + 0.1159; encoding (diffusers' FLUX training
    scripts): latents = (z - 0.1159) * 0.3611, z the posterior mean."""
    model = models["dev"]
    vae = model.codec.vae
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = torch.randn(2, *model.latent_shape)
    with torch.no_grad():
        expected = (vae.encode(images).latent_dist.mean - 0.1159) * 0.3611
        torch.testing.assert_close(model.encode_images(images), expected)
        decoded = vae.decode(latents / 0.3611 + 0.1159).sample.clamp(-1, 1)
        torch.testing.assert_close(model.decode_latents(latents), decoded)


@pytest.mark.parametrize(("scheduler", "tokens"), [(FLUX_DEV_SCHEDULER, 4096), (FLUX_DEV_SCHEDULER, 64),
                                                    (FLUX_SCHNELL_SCHEDULER, 4096)])  # fmt: skip
def test_the_time_grid_is_the_schedulers_as_fluxpipeline_sets_it(scheduler, tokens):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    steps, process = 5, FluxProcess(scheduler, tokens)
    expected = FlowMatchEulerDiscreteScheduler(**scheduler)
    mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
    expected.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    torch.testing.assert_close(process.times(steps), expected.sigmas, rtol=0, atol=0)
    # the exponential shift with mu is SD3's shift s t / (1 + (s - 1) t) at s = exp(mu), mu from
    # the image tokens by hand (1.15 at 1024 px); schnell does not shift (s = 1)
    if scheduler["use_dynamic_shifting"]:
        assert process.mu == pytest.approx(0.5 + 0.65 * (tokens - 256) / 3840)
    s = np.exp(process.mu) if scheduler["use_dynamic_shifting"] else 1.0
    grid = np.linspace(1.0, 1 / steps, steps)

    def sd3(shift):
        return torch.tensor([*(shift * grid / (1 + (shift - 1) * grid)), 0.0], dtype=torch.float32)

    torch.testing.assert_close(process.times(steps), sd3(s), rtol=1e-6, atol=1e-6)
    # the setting shift composes with it: the grid of s * shift
    torch.testing.assert_close(process.times(steps, 2.0), sd3(2.0 * s), rtol=1e-6, atol=1e-6)


def test_the_models_grid_uses_its_image_tokens_and_folder(models):
    assert (
        models["dev"].process.image_tokens == 64
        and models["dev"].process.scheduler_config["use_dynamic_shifting"]
    )
    assert models["schnell"].process.times(4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


# ----------------------------------------------------------------------------- processors and masks


def _inputs(transformer, batch=2, text=5, grid=(3, 4)):
    """Normalised-like hidden states and the rotary embedding of [text; image] tokens."""
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    image = torch.randn(batch, grid[0] * grid[1], width)
    context = torch.randn(batch, text, width)
    rotary = transformer.pos_embed(torch.cat([text_ids(text), image_ids(grid)]))
    return image, context, rotary


def _layout(model, batch=2, grid=(3, 4), enabled=1.0):
    cond = model.encode_text(SCENES[:batch])
    cond.enabled.fill_(enabled)
    return model.layout_condition(cond, grid, 2, record_attention=False)


def test_processors_with_the_layout_off_are_diffusers_attention(models):
    """Both block kinds: with no layout, or a layout turned off, each processor gives
    FluxAttnProcessor's output; with a trained branch only the image tokens change."""
    torch.manual_seed(1)
    model = build_model(config_for(Path(models["dev"].config.base_model), network={"single_blocks": "idm"}))
    transformer = trained_branches(model).transformer
    image, context, rotary = _inputs(transformer)
    double, single = transformer.transformer_blocks[0].attn, transformer.single_transformer_blocks[0].attn
    assert isinstance(double.processor, FluxLayoutJointProcessor)
    assert isinstance(single.processor, FluxLayoutSingleProcessor)
    joint = torch.cat([context, image], dim=1)
    with torch.no_grad():
        plain_double = FluxAttnProcessor()(double, image, context, None, rotary)
        plain_single = FluxAttnProcessor()(single, joint, None, None, rotary)
        for layout in (None, _layout(model, enabled=0.0)):
            ours = double.processor(double, image, context, None, rotary, layout)
            for a, b in zip(ours, plain_double, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(
                single.processor(single, joint, None, None, rotary, layout), plain_single
            )
        on_double = double.processor(double, image, context, None, rotary, _layout(model))
        on_single = single.processor(single, joint, None, None, rotary, _layout(model))
    torch.testing.assert_close(on_double[1], plain_double[1])  # the text stream is untouched
    assert (on_double[0] - plain_double[0]).abs().amax() > 1e-3
    text = context.shape[1]
    torch.testing.assert_close(on_single[:, :text], plain_single[:, :text])  # text tokens come first
    assert (on_single[:, text:] - plain_single[:, text:]).abs().amax() > 1e-3


def _hand_rotation(queries: torch.Tensor, grid: tuple[int, int], axes: tuple[int, ...]) -> torch.Tensor:
    """FLUX's rotary embedding written out: channel pairs (2j, 2j+1) of each axis k turn by
    position_k * 10000^(-2j / axes_k) for the token id (0, row, column), as complex products."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    positions = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).double()
    frequencies = [10000.0 ** (-torch.arange(0, size, 2).double() / size) for size in axes]
    angles = torch.cat([positions[:, [k]] * f for k, f in enumerate(frequencies)], dim=-1)  # (P, d / 2)
    pairs = torch.complex(queries[..., 0::2].double(), queries[..., 1::2].double()) * torch.polar(
        torch.ones_like(angles), angles
    )
    return torch.stack([pairs.real, pairs.imag], -1).flatten(-2).to(queries.dtype)


@pytest.mark.parametrize("block", ["double", "single"])
def test_rotary_branch_positions_against_a_hand_rotation(folders, block):
    """branch_positions=rotary: the adapter-only branch's image queries carry FLUX's rotary
    positions and the instance tokens none (id 0). The branch's share of a processor's output
    equals a loop over instances and pixels with the rotation written out, and it is not the
    position-blind branch's (at "none" a token's output does not depend on where it sits)."""
    torch.manual_seed(2)
    network = {"single_blocks": "layout", "branch_positions": "rotary"}
    model = trained_branches(build_model(config_for(folders["schnell"], use_idm=False, network=network)))
    transformer = model.transformer
    grid = (3, 4)
    image, context, rotary = _inputs(transformer, grid=grid)
    layout = _layout(model, grid=grid)
    blocks = transformer.transformer_blocks if block == "double" else transformer.single_transformer_blocks
    attn = blocks[0].attn
    branch = attn.processor

    def branch_share() -> torch.Tensor:  # the processor's output less diffusers' own, image tokens
        if block == "double":
            ours = branch(attn, image, context, None, rotary, layout)[0]
            return ours - FluxAttnProcessor()(attn, image, context, None, rotary)[0]
        joint = torch.cat([context, image], dim=1)
        ours = branch(attn, joint, None, None, rotary, layout)
        return (ours - FluxAttnProcessor()(attn, joint, None, None, rotary))[:, context.shape[1] :]

    with torch.no_grad():
        added = branch_share()
        heads = branch.heads
        queries = branch.to_q(image).unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, h, P, d)
        queries = _hand_rotation(queries, grid, transformer.config.axes_dims_rope)
        keys, values = (t.unflatten(-1, (heads, -1)) for t in branch.to_kv(layout.tokens).chunk(2, dim=-1))
        expected = torch.zeros_like(image)
        for b in range(len(image)):
            usable = layout.token_mask[b]  # (N, L): every instance's usable tokens, one softmax
            k, v = keys[b][usable], values[b][usable]  # (T, h, d)
            width = v.shape[-1]
            for pixel in range(image.shape[1]):
                for head in range(heads):
                    weights = torch.softmax(k[:, head] @ queries[b, head, pixel] / width**0.5, dim=0)
                    expected[b, pixel, head * width : (head + 1) * width] = weights @ v[:, head]
        torch.testing.assert_close(added, branch.to_out(expected), rtol=1e-4, atol=1e-5)
        branch.rotate_queries = False  # the position-blind branch, same weights
        assert (branch_share() - added).abs().amax() > 1e-3


def test_packed_token_box_masks_against_a_per_pixel_loop(models):
    """The IDM's soft masks on FLUX's 8x8 token grid: each token's share of its 2x2 latent pixels
    (16x16 image pixels at FLUX's VAE) whose centres lie in the box, in the order the tokens are
    packed (the loop's per-pixel indicator, packed like the latents, averages to the masks)."""
    model = models["dev"]
    boxes = [(0.1, 0.3, 0.55, 0.9), (0.0, 0.0, 0.25, 0.25)]
    layout = Layout("two boxes", tuple(Instance(f"box {k}", box) for k, box in enumerate(boxes)))
    cond = model.encode_text([layout])
    side = model.latent_shape[-1]
    masks = model.layout_condition(cond, model.token_grid, 2, False).coverage[0]  # (N, 64)
    indicator = torch.zeros(len(boxes), 1, side, side)
    for n, (x0, y0, x1, y1) in enumerate(boxes):
        for row in range(side):
            for col in range(side):
                x, y = (col + 0.5) / side, (row + 0.5) / side
                indicator[n, 0, row, col] = float(x0 <= x < x1 and y0 <= y < y1)
    torch.testing.assert_close(masks, pack_latents(indicator).mean(-1))
    assert masks[1].reshape(8, 8)[:2, :2].eq(1).all() and masks[1].sum() == 4  # whole tokens
    assert ((masks[0] > 0) & (masks[0] < 1)).any()  # the first box cuts through tokens


@pytest.mark.parametrize(
    ("single", "use_idm", "layers"),
    [("none", True, 1), ("layout", True, 1), ("idm", True, 2), ("layout", False, 2)],
)
def test_single_blocks_setting(folders, single, use_idm, layers):
    """The branch on the single-stream blocks; attention maps (L_dis's input) come from branches of
    the double-stream blocks' kind only: an adapter-only branch beside IDM records none (its R+ and
    R- are one map, a constant term that would dilute L_dis), beside adapter-only ones it does."""
    torch.manual_seed(0)
    model = build_model(config_for(folders["schnell"], use_idm=use_idm, network={"single_blocks": single}))
    kinds = {type(p) for n, p in model.transformer.attn_processors.items() if n.startswith("single")}
    assert kinds == {FluxPlainProcessor if single == "none" else FluxLayoutSingleProcessor}
    cond = model.encode_text(SCENES)
    x, sigma = torch.randn(2, *model.latent_shape), torch.tensor([0.8, 0.3])
    _, maps = model(x, sigma, cond, record_attention=True)
    assert len(maps) == layers and all(m[0].shape == (2, 2, 2, 64) and m[2] == (8, 8) for m in maps)
    if single == "idm":
        idc_loss(maps, cond.boxes, cond.valid).backward()
        branch = model.transformer.single_transformer_blocks[0].attn.processor
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.idm.parameters())


def test_caption_word_tokens_come_from_t5(folders):
    """model.caption_max_length > 0: each caption's first T5 states (T5 run at that length) become
    word tokens after [null, layout], and the IDM takes its general path."""
    torch.manual_seed(0)
    model = build_model(config_for(folders["dev"], caption_max_length=4))
    cond = model.encode_text(SCENES)
    assert cond.caption_hidden.shape == (2, 10, 4, 48) and cond.caption_mask[0, :2].all()
    expected = model.text_encoder.encode(["a red circle"], length=4).hidden[0]
    torch.testing.assert_close(cond.caption_hidden[0, 0], expected)
    assert not cond.caption_mask[0, 2:].any()  # padded instance slots hold no words
    _, maps = model(
        torch.randn(2, *model.latent_shape), torch.tensor([0.8, 0.3]), cond, record_attention=True
    )
    assert len(maps) == 1 and maps[0][0].shape == (2, 2, 2, 64)


def test_checkpointed_blocks_give_the_same_loss_and_gradients(folders):
    """Gradient checkpointing (the flux presets' setting) on both block kinds, L_dis included."""
    torch.manual_seed(0)
    model = trained_branches(build_model(config_for(folders["dev"], network={"single_blocks": "idm"})), 0.05)
    x_t, sigma = torch.randn(2, *model.latent_shape), torch.tensor([0.3, 0.8])

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        cond = model.encode_text(SCENES)
        v_pred, maps = model(x_t, sigma, cond, record_attention=True)
        loss = (v_pred**2).mean() + idc_loss(maps, cond.boxes, cond.valid)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.trainable_parameters()]

    loss, grads = loss_and_grads()
    model.transformer.enable_gradient_checkpointing()
    loss_ckpt, grads_ckpt = loss_and_grads()
    torch.testing.assert_close(loss, loss_ckpt)
    for a, b in zip(grads, grads_ckpt, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_bad_single_block_settings_are_refused(folders):
    with pytest.raises(
        ConfigError, match="model.network.single_blocks 'all': expected one of idm, layout, none"
    ):
        build_model(config_for(folders["schnell"], network={"single_blocks": "all"}))
    with pytest.raises(ConfigError, match="single_blocks=idm needs model.use_idm=true"):
        build_model(config_for(folders["schnell"], use_idm=False, network={"single_blocks": "idm"}))
    with pytest.raises(ConfigError, match="branch_positions 'sincos': expected one of none, rotary"):
        build_model(config_for(folders["schnell"], network={"branch_positions": "sincos"}))
    with pytest.warns(UserWarning, match="cannot place instances"):
        build_model(config_for(folders["schnell"], use_idm=False))


# ----------------------------------------------------------------------------- distilled guidance


def test_the_distilled_guidance_reaches_the_transformer(models):
    dev, schnell = models["dev"], models["schnell"]
    seen = []
    hook = dev.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["guidance"]), with_kwargs=True
    )
    try:
        sample(dev, SCENES, SamplingSettings(steps=2, cfg=1.0, guidance=6.0), decode=False)
    finally:
        hook.remove()
    assert len(seen) == 2 and all(g.tolist() == [6.0, 6.0] for g in seen)  # one row per sample
    x, sigma, cond = torch.randn(2, *dev.latent_shape), torch.tensor([0.9, 0.4]), dev.encode_text(SCENES)
    with torch.no_grad():
        default = dev(x, sigma, cond)[0]
        cond.guidance = torch.tensor([3.5, 3.5])
        torch.testing.assert_close(dev(x, sigma, cond)[0], default)  # the network's default, 3.5
        cond.guidance = torch.tensor([1.0, 8.0])
        assert (dev(x, sigma, cond)[0] - default).abs().amax() > 1e-4
    # schnell has no guidance input: the setting is refused, two-row CFG is its guidance
    with pytest.raises(ConfigError, match="guidance=3.5: this model takes no distilled guidance"):
        sample(schnell, SCENES, SamplingSettings(steps=2, cfg=1.0, guidance=3.5))
    assert sample(schnell, SCENES, SamplingSettings(steps=2, cfg=2.0)).shape == (2, 3, 32, 32)


def test_the_guidance_travels_with_the_rows(models):
    """Conditioning.guidance through true CFG's stacking (FluxPipeline gives both rows the scale),
    row selection, trimming and casts; a stack of rows with and without it is refused."""
    dev = models["dev"]
    cond = guidance_conditioning(dev, SCENES, cfg=2.0, device="cpu", guidance=4.0)
    assert len(cond) == 4 and cond.guidance.tolist() == [4.0] * 4 and cond.enabled.tolist() == [1, 1, 0, 0]
    assert cond.rows(torch.tensor([1, 2])).guidance.tolist() == [4.0, 4.0]
    assert cond.trimmed().guidance is cond.guidance and cond.to("cpu").guidance.tolist() == [4.0] * 4
    plain = dev.encode_text(SCENES)
    assert plain.guidance is None and Conditioning.cat([plain, plain]).guidance is None
    with pytest.raises(ValueError, match="some parts carry guidance and some do not"):
        Conditioning.cat([plain, cond])
    half = trained_branches(build_model(config_for(Path(dev.config.base_model))).eval(), 0.05)
    half.load_state_dict(dev.state_dict())
    half.to(torch.bfloat16)  # a cast model casts the guidance with the other float inputs
    out, _ = half(torch.randn(4, *dev.latent_shape), torch.full((4,), 0.5), cond)
    assert out.dtype == torch.bfloat16


def test_on_policy_ratio_is_one_and_rescoring_reads_the_guidance(models):
    """The RL policy on FLUX: re-scoring recorded actions with the sampling weights and the
    rollout's distilled guidance gives ratio 1 (also when the layout switches off inside the SDE
    window); another guidance does not."""
    model = trained_branches(build_model(config_for(Path(models["dev"].config.base_model))).eval(), 0.05)
    settings = SamplingSettings(steps=6, cfg=1.0, layout_fraction=0.2, guidance=5.0)
    torch.manual_seed(2)
    recorded = rollout(model, SCENES, settings, rl_steps=3)
    assert recorded.x_t.shape == (3, 2, 16, 16, 16)
    log_prob, mean, scale = policy_log_probs(model, recorded, settings)
    ratio = torch.exp(log_prob - recorded.log_prob)
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=2e-5, rtol=0)
    torch.testing.assert_close(mean, recorded.mean, atol=2e-5, rtol=1e-5)
    other, other_mean, _ = policy_log_probs(model, recorded, settings.override(guidance=50.0))
    assert (other_mean - recorded.mean).abs().amax() > 1e-3 and (
        other - recorded.log_prob
    ).abs().amax() > 2e-4
    config = TrainConfig(model=config_for(Path(model.config.base_model)), guidance=5.0)
    assert rollout_settings(config).guidance == 5.0  # the RL stage's rollouts take the run's guidance


# ----------------------------------------------------------------------------- training, RL, pipeline


@pytest.mark.parametrize("variant", VARIANTS)
def test_trains_with_ppo_resumes_round_trips_and_runs_in_the_pipeline(folders, variant, tmp_path):
    """Stage 1 (flow matching + L_dis) and the RL stage (SDE policy, critic, PPO) on a folder,
    resumed; the checkpoint holds idruid's weights and the folder's hashed configs only."""
    dev = variant == "dev"
    rl = RLConfig(
        algorithm="ppo", start_fraction=0.0, sampling_steps=3, batch_size=2, group_size=2, baseline="critic",
        critic_gate=0.0, critic_warmup=1, critic_hidden=16, cfg=1.0 if dev else 2.0,
    )  # fmt: skip
    config = TrainConfig(
        model=config_for(folders[variant]), rl=rl, steps=2, batch_size=2, warmup_steps=1, checkpoint_every=1,
        log_every=1, eval_steps=2, eval_cfg=1.0 if dev else 2.0, guidance=5.0 if dev else None,
    )  # fmt: skip
    train(config, tmp_path / "run", progress=False)
    config.steps = 3
    export = train(config, tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    assert log[0]["l_dis"] is not None and log[0]["l_rl"] is None and log[2]["l_rl"] is not None
    # the checkpoint: idruid's weights (adapter, processors) and the hashed configs, no base weight
    meta = read_checkpoint_meta(export)
    assert set(meta["base"]["configs"]) == {"transformer/config.json", "scheduler/scheduler_config.json"}
    assert meta["sampling"]["guidance"] == (5.0 if dev else None)
    loaded = load_checkpoint(export)
    keys = set(loaded.trainable_state_dict())
    assert keys and all(k.startswith("adapter.") or ".processor." in k for k in keys)
    again = load_checkpoint(save_checkpoint(loaded, tmp_path / "again"))
    x, sigma, cond = (
        torch.randn(2, *loaded.latent_shape),
        torch.tensor([0.7, 0.2]),
        loaded.encode_text(SCENES),
    )
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, cond)[0], again(x, sigma, cond)[0])
    # the pipeline: the checkpoint's settings, FLUX's grid, the same image as the sampling loop
    pipe = IDruidPipeline.from_pretrained(export)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.sampling.guidance == (5.0 if dev else None)
    out = pipe(layouts=SCENES[:1], output_type="latent").images
    expected = sample(pipe.model, SCENES[:1], pipe.sampling, decode=False)
    torch.testing.assert_close(out, expected)
    if dev:
        other = pipe(layouts=SCENES[:1], output_type="latent", distilled_guidance_scale=1.0).images
        assert (other - out).abs().amax() > 1e-4
    else:
        with pytest.raises(ConfigError, match="takes no distilled guidance"):
            pipe(layouts=SCENES[:1], distilled_guidance_scale=3.5)
    # the CLI's --guidance reaches the model too (refused by schnell, as the pipeline's argument)
    save_layouts(SCENES[:1], tmp_path / "layout.json")
    png, flags = tmp_path / "image.png", ["--steps", "2", "--cfg", "1", "--guidance", "1.0"]
    args = ["generate", str(tmp_path / "layout.json"), "--checkpoint", str(export), "--out", str(png), *flags]
    assert main(args) == (0 if dev else 2)
    if dev:
        settings = pipe.sampling.override(steps=2, cfg=1.0, guidance=1.0)
        expected = to_uint8(sample(pipe.model, SCENES[:1], settings))[0]
        np.testing.assert_array_equal(np.asarray(Image.open(png)), expected)
    pipe.save_pretrained(tmp_path / "pipe")
    reloaded = IDruidPipeline.from_pretrained(tmp_path / "pipe")
    reloaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(reloaded(layouts=SCENES[:1], output_type="latent").images, out)


def test_a_checkpoint_refuses_another_scheduler(folders, models, tmp_path):
    """The time grid comes from the folder's scheduler config, so a checkpoint records its hash."""
    save_checkpoint(models["dev"], tmp_path / "ckpt")
    moved = tmp_path / "other"
    shutil.copytree(folders["dev"], moved)
    scheduler = moved / "scheduler" / "scheduler_config.json"
    scheduler.write_text(json.dumps({**json.loads(scheduler.read_text()), "max_shift": 1.5}))
    with pytest.raises(CheckpointError, match="max_shift: 1.15 recorded vs 1.5 found"):
        load_checkpoint(tmp_path / "ckpt", base_model=moved)


# ----------------------------------------------------------------------------- presets and refusals


def test_a_flux_folder_given_to_sd3_is_refused_naming_the_flux_presets(folders, tmp_path):
    config = load_config("sd3-medium", [f"model.base_model={folders['dev']}", "model.resolution=32"])
    named = (
        f"'{folders['dev']}' is a FluxPipeline folder, not the StableDiffusion3Pipeline folder the sd3 "
        "backbone reads; use the flux-dev or flux-schnell preset \\(model.backbone=flux\\)"
    )
    with pytest.raises(ConfigError, match=named):
        build_model(config.model)
    sd3 = tmp_path / "sd3"  # an SD3 folder given to a FLUX preset: only its model_index.json is read
    sd3.mkdir()
    (sd3 / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')
    with pytest.raises(
        ConfigError, match="not the FluxPipeline folder the flux backbone reads; use the sd3-medium"
    ):
        build_model(load_config("flux-dev", [f"model.base_model={sd3}"]).model)


@pytest.mark.parametrize(("preset", "variant"), [("flux-dev", "dev"), ("flux-schnell", "schnell")])
def test_real_weight_presets_build_on_a_folder(folders, preset, variant):
    config = load_config(preset, [f"model.base_model={folders[variant]}", "model.resolution=32"])
    model = build_model(config.model)
    assert model.guidance == (("cfg", "distilled") if variant == "dev" else ("cfg",))
    settings = config.sampling_settings()
    assert settings.cfg == 1.0 and settings.steps == (28 if variant == "dev" else 4)
    assert settings.guidance == (3.5 if variant == "dev" else None)
    assert model.text_encoder.encode(["a cat"], length=config.model.prompt_max_length).hidden.shape[1] == (
        512 if variant == "dev" else 256
    )
    with pytest.raises(ConfigError, match="rl.prompts is not set"):
        config.rl.check()


@pytest.mark.parametrize("preset", ["shapes-flux", "shapes-flux-baseline", "shapes-flux-full"])
def test_the_miniature_presets_build_the_real_code_paths(preset):
    config = load_config(preset)
    model = build_model(config.model)
    assert isinstance(model, FluxLayoutModel) and model.latent_shape == (12, 16, 16)
    assert model.transformer.config.in_channels == 48 and model.token_grid == (8, 8)
    assert isinstance(model.process, FluxProcess) and model.guidance == ("cfg",)
    double = {type(p) for n, p in model.transformer.attn_processors.items() if n.startswith("transformer_")}
    assert double == {FluxLayoutJointProcessor} and model.transformer.config.num_single_layers == 2
    assert all(p.use_idm == config.model.use_idm for p in model.transformer.attn_processors.values()
               if isinstance(p, FluxLayoutJointProcessor))  # fmt: skip
    assert (config.rl.algorithm == "ppo") == (preset == "shapes-flux-full")


def test_lora_adapts_the_backbones_attention_and_round_trips(folders, tmp_path):
    """LoRA (peft) on a FLUX folder: the double-stream blocks' projections (image and text streams)
    and the single-stream blocks' q/k/v (they have no to_out), never the layout processors; the
    checkpoint stores the layout branch and LoRA only, and reloads to the same prediction."""
    torch.manual_seed(0)
    model = build_model(config_for(folders["dev"], lora_rank=2)).eval()
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_parameters() if ".lora_A" in name}
    double = {n for n in adapted if ".transformer_blocks." in n}
    single = {n for n in adapted if ".single_transformer_blocks." in n}
    blocks = len(model.transformer.transformer_blocks)
    singles = len(model.transformer.single_transformer_blocks)
    assert len(double) == blocks * 8 and len(single) == singles * 3 and adapted == double | single
    assert not any(".processor." in n for n in adapted)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("adapter.") or ".processor." in n for n in trainable)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.05 * torch.randn_like(param))
    saved = save_checkpoint(model, tmp_path / "lora")
    stored = set(load_file(str(saved / "model.safetensors")))
    assert any("lora_B" in k for k in stored) and not any("base_layer" in k for k in stored)
    x, sigma, cond = torch.randn(2, *model.latent_shape), torch.tensor([0.7, 0.2]), model.encode_text(SCENES)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(saved)(x, sigma, cond)[0], model(x, sigma, cond)[0])
