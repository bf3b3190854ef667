"""The SD1.5 (UNet, DDPM) backbone: IDM placement (appendix B), the shared calling contract,
DDIM sampling against diffusers, L_dis on two grids, checkpoints, and a train + RL run."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from idruid.checkpoint import load_checkpoint, save_checkpoint
from idruid.config import ConfigError, load_config
from idruid.layout import Instance, Layout
from idruid.losses import idc_loss
from idruid.models import build_model
from idruid.models.processors import LayoutCrossAttnProcessor, PromptAttnProcessor
from idruid.models.sd15 import LayoutUNetModel, idm_layers
from idruid.rl.rollout import policy_log_probs, rollout
from idruid.sampling import SamplingSettings, sample
from idruid.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

# SD1.5's UNet (runwayml/stable-diffusion-v1-5 unet/config.json, the keys that set its structure)
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}


def layouts(count: int = 2) -> list[Layout]:
    scenes = [
        Layout("a red circle and a blue square", (
            Instance("a red circle", (0.05, 0.1, 0.45, 0.5)),
            Instance("a blue square", (0.5, 0.5, 0.95, 0.9)),
        )),
        Layout("a green triangle", (Instance("a green triangle", (0.2, 0.2, 0.8, 0.7)),)),
        Layout("a yellow square", (Instance("a yellow square", (0.3, 0.1, 0.7, 0.5)),)),
    ]  # fmt: skip
    return scenes[:count]


@pytest.fixture(scope="module")
def model() -> LayoutUNetModel:
    torch.manual_seed(0)
    return build_model(load_config("tiny-sd15").model).eval()


def test_idm_sits_at_sd15s_mid_block_and_16x16_decoder_layers():
    """On SD1.5's own architecture (built on the meta device: no weights), IDM goes to the mid
    block (8x8 of a 64x64 latent) and the three cross-attention layers of up_blocks.1 (16x16)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    layers = idm_layers(unet)
    attn = "attentions.{}.transformer_blocks.0.attn2.processor"
    expected = {"mid_block." + attn.format(0): 8} | {f"up_blocks.1.{attn.format(k)}": 4 for k in range(3)}
    assert layers == expected
    assert sum(".attn2." in name for name in unet.attn_processors) == 16  # the other 12 keep the prompt


def test_model_installs_idm_exactly_on_those_layers(model):
    layers = idm_layers(model.unet)
    assert sorted(layers.values()) == [1, 1, 2]  # factors against the 16x16 latent
    for name, processor in model.unet.attn_processors.items():
        if name in layers:
            assert isinstance(processor, LayoutCrossAttnProcessor) and processor.downsample == layers[name]
        else:
            assert isinstance(processor, PromptAttnProcessor)
    # the 2-level tiny UNet on 16x16 latents: mid block at 8x8, decoder cross-attention at 16x16
    assert model.latent_shape == (12, 16, 16)
    assert sorted({(16 // f, 16 // f) for f in layers.values()}) == [(8, 8), (16, 16)]


def test_untrained_layout_branch_leaves_the_unet_unchanged(model):
    """The zero-initialised residual: the model equals the bare UNet with diffusers' processors,
    so the processors' prompt attention is diffusers' own."""
    cond = model.encode_text(layouts())
    x, t = torch.randn(2, 12, 16, 16), torch.tensor([900.0, 20.0])
    bare = build_model(load_config("tiny-sd15").model)
    bare.load_state_dict(model.state_dict())
    bare.unet.set_attn_processor(AttnProcessor2_0())
    with torch.no_grad():
        ours = model(x, t, cond)[0]
        plain = bare.unet(x, t, encoder_hidden_states=cond.prompt_hidden).sample
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)


def test_layout_branch_changes_the_prediction_only_where_enabled(model):
    torch.manual_seed(1)
    trained = build_model(load_config("tiny-sd15").model).eval()
    trained.load_state_dict(model.state_dict())
    for processor in trained.unet.attn_processors.values():
        if isinstance(processor, LayoutCrossAttnProcessor):
            torch.nn.init.normal_(processor.to_out.weight, std=0.3)
    cond = trained.encode_text(layouts())
    x, t = torch.randn(2, 12, 16, 16), torch.tensor([500.0, 500.0])
    with torch.no_grad():
        on, off = trained(x, t, cond)[0], trained(x, t, cond, layout_on=False)[0]
        cond.enabled[1] = 0.0
        half = trained(x, t, cond)[0]
    assert (on - off).abs().amax() > 1e-3
    torch.testing.assert_close(half[1], off[1])
    torch.testing.assert_close(half[0], on[0])


def test_idc_loss_on_two_grids_reaches_every_idm(model):
    trained = build_model(load_config("tiny-sd15").model)
    cond = trained.encode_text(layouts())
    x, t = torch.randn(2, 12, 16, 16), torch.tensor([700.0, 300.0])
    _, maps = trained(x, t, cond, record_attention=True)
    assert [m[2] for m in maps] == [(8, 8), (16, 16), (16, 16)]  # mid block, then up_blocks.1's two layers
    assert maps[0][0].shape == (2, 2, 2, 64) and maps[1][0].shape == (2, 2, 2, 256)
    idc_loss(maps, cond.boxes, cond.valid).backward()
    for processor in trained.unet.attn_processors.values():
        if isinstance(processor, LayoutCrossAttnProcessor):
            grads = [p.grad.abs().sum() for p in processor.idm.parameters() if p.grad is not None]
            assert grads and sum(grads) > 0


def test_sampling_is_diffusers_ddim(model):
    """The one sampling loop with the eps process equals a loop over diffusers' DDIMScheduler."""
    scenes = layouts()
    x_init = torch.randn(2, 12, 16, 16)
    ours = sample(model, scenes, SamplingSettings(steps=4, cfg=1.0, layout_fraction=1.0), x_init=x_init)
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
        set_alpha_to_one=False, clip_sample=False,
    )  # fmt: skip
    scheduler.set_timesteps(4)
    cond, x = model.encode_text(scenes), x_init
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t.float().expand(2), cond)[0], t, x).prev_sample
    expected = torch.nn.functional.pixel_shuffle(x, 2).clamp(-1, 1)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert ours.shape == (2, 3, 32, 32)


def test_on_policy_ratio_is_one_for_the_ddpm_policy(model):
    torch.manual_seed(2)
    settings = SamplingSettings(steps=5, cfg=2.0, layout_fraction=1.0)
    recorded = rollout(model, layouts(3), settings, rl_steps=2, eta=1.0)
    assert recorded.x_t.shape == (2, 3, 12, 16, 16) and recorded.times.tolist()[:2] == [801.0, 601.0]
    log_prob, mean, scale = policy_log_probs(model, recorded, settings, eta=1.0)
    torch.testing.assert_close(log_prob, recorded.log_prob, atol=2e-5, rtol=0)
    torch.testing.assert_close(mean, recorded.mean, atol=2e-5, rtol=1e-5)
    assert torch.all(scale > 0)
    # eta = 0: the rollout is the deterministic DDIM sampler
    x_init = torch.randn(2, 12, 16, 16)
    settings = SamplingSettings(steps=4, cfg=1.0, layout_fraction=1.0)
    quiet = rollout(model, layouts(), settings, rl_steps=4, eta=0.0, x_init=x_init)
    torch.testing.assert_close(quiet.images, sample(model, layouts(), settings, x_init=x_init))


def test_checkpoint_round_trip(model, tmp_path):
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(loaded, LayoutUNetModel)
    cond = model.encode_text(layouts())
    x, t = torch.randn(2, 12, 16, 16), torch.tensor([400.0, 40.0])
    with torch.no_grad():
        assert torch.equal(model(x, t, cond)[0], loaded(x, t, cond)[0])


def test_bad_configs_are_refused():
    config = load_config("tiny-sd15")
    config.model.in_channels = 3
    with pytest.raises(ConfigError, match="12"):
        build_model(config.model)
    config = load_config("tiny-sd15", ["model.network.output=x0"])  # sd3's setting
    with pytest.raises(ConfigError, match="model.network.output: not a setting of the sd15 backbone"):
        build_model(config.model)
    with pytest.raises(ConfigError, match="model.network.unet_channels needs at least 2 levels"):
        build_model(load_config("tiny-sd15", ["model.network.unet_channels=[32]"]).model)
    with pytest.raises(ConfigError, match="model.network.num_heads takes an integer, got 'two'"):
        build_model(load_config("tiny-sd15", ["model.network.num_heads=two"]).model)
    config = load_config("tiny-sd15", ["model.codec=jpeg"])
    with pytest.raises(ConfigError, match="model.codec 'jpeg'"):
        build_model(config.model)
    with pytest.raises(ConfigError, match="model.backbone 'sdxl'"):
        build_model(load_config("tiny", ["model.backbone=sdxl"]).model)


def test_unet_trains_with_ppo_and_resumes(tmp_path):
    """Stage 1 (noise prediction + L_dis) and the RL stage (DDPM policy, critic, PPO) on the UNet."""
    overrides = [
        "rl.algorithm=ppo", "rl.start_fraction=0", "rl.sampling_steps=3", "rl.batch_size=2",
        "rl.group_size=2", "rl.baseline=critic", "rl.critic_gate=0", "rl.critic_warmup=1",
        "rl.critic_hidden=16", "steps=3",
    ]  # fmt: skip
    config = load_config("tiny-sd15", overrides)
    config.steps = 2
    train(config, tmp_path / "run", progress=False)
    config.steps = 3
    export = train(config, tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    assert log[0]["l_dis"] is not None and log[0]["l_rl"] is None and log[2]["l_rl"] is not None
    assert isinstance(load_checkpoint(export), LayoutUNetModel)


def test_shared_query_uses_the_unets_own_queries():
    """share_query on the UNet: the same output as an own to_q holding each layer's to_q weights."""
    torch.manual_seed(0)
    own = build_model(load_config("tiny-sd15").model).eval()
    shared = build_model(load_config("tiny-sd15", ["model.share_query=true"]).model).eval()
    modules = dict(own.unet.named_modules())
    for name, processor in own.unet.attn_processors.items():
        if isinstance(processor, LayoutCrossAttnProcessor):
            torch.nn.init.normal_(processor.to_out.weight, std=0.3)
            with torch.no_grad():  # the UNet's to_q has no bias
                processor.to_q.weight.copy_(modules[name.removesuffix(".processor")].to_q.weight)
                processor.to_q.bias.zero_()
    state = {k: v for k, v in own.state_dict().items() if ".processor.to_q." not in k}
    shared.load_state_dict(state)  # strict: the shared model has no to_q, and nothing else differs
    cond = own.encode_text(layouts())
    x, t = torch.randn(2, 12, 16, 16), torch.tensor([600.0, 60.0])
    with torch.no_grad():
        torch.testing.assert_close(own(x, t, cond)[0], shared(x, t, cond)[0], rtol=1e-5, atol=1e-5)
