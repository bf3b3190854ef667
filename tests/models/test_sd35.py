"""SD3.5-medium (MMDiT-X: qk rms-norm, a second image-only attention ``attn2`` in its first blocks)
and SD3.5-large (qk rms-norm) on the sd3 backbone, through their presets, on tiny random folders
saved by StableDiffusion3Pipeline: which attention carries IDM, the attention math against
diffusers', training, sampling, checkpoints, RL with resume and the diffusers pipeline."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from diffusers.models import attention_processor
from diffusers.models.attention_processor import JointAttnProcessor2_0
from safetensors.torch import load_file
from tiny_models import SD35_VARIANTS, build_tiny_sd15_folder, build_tiny_sd35_folder

from idruid.checkpoint import load_checkpoint, save_checkpoint
from idruid.config import ConfigError, SamplingSettings, load_config
from idruid.layout import Instance, Layout
from idruid.models import build_model
from idruid.models.processors import ImageAttnProcessor, LayoutJointAttnProcessor, joint_attention
from idruid.models.registry import backbone
from idruid.models.sd3 import joint_attention_processors
from idruid.pipeline import IDruidPipeline
from idruid.sampling import guidance_conditioning, sample
from idruid.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = tuple(SD35_VARIANTS)
SCENES = [
    Layout("a red circle and a blue square", (
        Instance("a red circle", (0.05, 0.1, 0.45, 0.5)),
        Instance("a blue square", (0.5, 0.5, 0.95, 0.9)),
    )),
    Layout("a green triangle", (Instance("a green triangle", (0.2, 0.2, 0.8, 0.7)),)),
]  # fmt: skip
# tiny sizes on a tiny folder: 32 px images (16 latent channels at 16x16), a narrow IDM
TINY = ["model.resolution=32", "model.idm_hidden=16", "model.geometry_rank=8"]
# a run on the shapes world with the preset's model, small and in float32 on the CPU (the RL
# batch of 2 rollouts on one process takes groups of 2)
RUN = [*TINY, "data=shapes", "num_workers=0", "mixed_precision=no", "gradient_checkpointing=false",
       "batch_size=2", "warmup_steps=1", "checkpoint_every=1", "log_every=1", "rl.group_size=2"]  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sd35")
    return {variant: build_tiny_sd35_folder(root / variant, variant) for variant in VARIANTS}


def preset(variant: str, folder, *overrides: str):
    return load_config(f"sd35-{variant}", [f"model.base_model={folder}", *overrides])


@pytest.fixture(scope="module")
def models(folders) -> dict:
    torch.manual_seed(0)
    return {v: build_model(preset(v, folders[v], *TINY).model).eval() for v in VARIANTS}


def perturb_branch(model) -> None:
    """A trained-looking layout branch: the zero-initialised residual made non-zero."""
    for processor in model.transformer.attn_processors.values():
        if isinstance(processor, LayoutJointAttnProcessor):
            torch.nn.init.normal_(processor.to_out.weight, std=0.3)


def log_of(run) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ presets
def test_presets_hold_the_model_cards_settings():
    """Stability's model cards (diffusers example) and scheduler_config.json of each release."""
    medium, large = load_config("sd35-medium"), load_config("sd35-large")
    assert medium.sampling_settings() == SamplingSettings(steps=40, cfg=4.5, layout_fraction=0.3, shift=3.0)
    assert large.sampling_settings() == SamplingSettings(steps=28, cfg=3.5, layout_fraction=0.3, shift=3.0)
    for config in (medium, large):
        assert (config.rl.sampling_steps, config.rl.cfg) == (config.eval_steps, config.eval_cfg)
        assert config.model.resolution == 1024 and config.model.prompt_max_length == 77 + 256
        assert config.model.backbone == "sd3" and config.model.share_query
    assert {"sd35-medium", "sd35-large"} <= set(backbone("sd3").folder_presets)
    with pytest.raises(ConfigError, match="model.text_encoder=base"):
        build_model(medium.model)  # model.base_model is required


def test_a_folder_of_another_pipeline_names_the_sd35_presets(folders, tmp_path):
    config = load_config("sd35-medium", [f"model.base_model={build_tiny_sd15_folder(tmp_path / 'sd15')}"])
    with pytest.raises(ConfigError, match="StableDiffusionPipeline folder.*use the sd15 preset"):
        build_model(config.model)
    config = load_config("sd15", [f"model.base_model={folders['large']}"])
    with pytest.raises(ConfigError, match="use the sd3-medium or sd35-medium or sd35-large or sd3-druid"):
        build_model(config.model)


# ------------------------------------------------------------------ the dual attention
def test_diffusers_sets_its_joint_processor_on_both_attentions(folders):
    """What the comparison below is against: diffusers 0.42's own processors of an SD3.5-medium
    transformer, JointAttnProcessor2_0 on the joint ``attn`` and on the image-only ``attn2``."""
    plain = SD3Transformer2DModel.from_pretrained(folders["medium"] / "transformer")
    kinds = {name: type(p) for name, p in plain.attn_processors.items()}
    assert kinds == {
        "transformer_blocks.0.attn.processor": JointAttnProcessor2_0,
        "transformer_blocks.0.attn2.processor": JointAttnProcessor2_0,
        "transformer_blocks.1.attn.processor": JointAttnProcessor2_0,
    }
    assert joint_attention_processors(plain) == [
        "transformer_blocks.0.attn.processor",
        "transformer_blocks.1.attn.processor",
    ]


@pytest.mark.parametrize("share_query", [True, False])
def test_layout_off_the_processors_compute_diffusers_attention(folders, share_query):
    """On the joint attention and on attn2 (qk rms-norm), with the layout off: the IDM processor,
    the plain one and joint_attention give diffusers' JointAttnProcessor2_0 to float tolerance."""
    torch.manual_seed(0)
    block = SD3Transformer2DModel.from_pretrained(folders["medium"] / "transformer").transformer_blocks[0]
    idm = LayoutJointAttnProcessor(32, 4, 32, share_query=share_query)
    torch.nn.init.normal_(idm.to_out.weight, std=0.3)  # a branch that would show, were it run
    hidden, context = torch.randn(2, 16, 32), torch.randn(2, 7, 32)
    with torch.no_grad():
        image, text = JointAttnProcessor2_0()(block.attn, hidden, context)
        ours_image, ours_text = idm(block.attn, hidden, context)
        torch.testing.assert_close(ours_image, image, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours_text, text, rtol=1e-5, atol=1e-6)
        alone = JointAttnProcessor2_0()(block.attn2, hidden)
        torch.testing.assert_close(idm(block.attn2, hidden), alone, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ImageAttnProcessor()(block.attn2, hidden, layout=object()), alone)
        torch.testing.assert_close(joint_attention(block.attn2, hidden, None)[0], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_model_with_its_layout_off_is_the_diffusers_transformer(models, folders, variant):
    """End to end: the model's backbone with the layout off predicts what the folder's transformer
    with diffusers' own processors does; with a trained-looking branch on, it does not."""
    model = models[variant]
    plain = SD3Transformer2DModel.from_pretrained(folders[variant] / "transformer").eval()
    cond = model.encode_text(SCENES)
    x, sigma = torch.randn(2, *model.latent_shape), torch.tensor([0.8, 0.3])
    with torch.no_grad():
        expected = plain(
            hidden_states=x,
            encoder_hidden_states=cond.prompt_hidden,
            pooled_projections=cond.prompt_pooled,
            timestep=sigma * 1000.0,
            return_dict=False,
        )[0]
        torch.testing.assert_close(model(x, sigma, cond, layout_on=False)[0], expected, rtol=1e-5, atol=1e-5)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        perturb_branch(model)
        on = model(x, sigma, cond)[0]
        model.load_state_dict(state)
    assert (on - expected).abs().max() > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
def test_skip_layer_guidance_is_stable_diffusion_3_pipelines_loop(models, folders, variant):
    """Skip-layer guidance (the sampling setting ``skip_layers``) with the layout off: the loop of
    StableDiffusion3Pipeline written out on the folder's own transformer and scheduler, CFG rows,
    then on the steps i with steps x start < i < steps x stop the conditional rows again with the
    blocks skipped, added at the scale. Off, and at cfg 1, it changes nothing."""
    model, steps, cfg, scale = models[variant], 10, 4.5, 2.8
    plain = SD3Transformer2DModel.from_pretrained(folders[variant] / "transformer").eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folders[variant] / "scheduler")
    scheduler.set_timesteps(steps)
    noise = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(4))
    settings = SamplingSettings(steps=steps, cfg=cfg, layout_fraction=0.0, shift=scheduler.config.shift,
                                skip_layers=[1], skip_layer_stop=0.35)  # fmt: skip
    with torch.no_grad():
        cond = guidance_conditioning(model, SCENES, cfg, "cpu")  # [conditional; unconditional] rows
        x, window = noise.clone(), []

        def predict(rows, latents, t, **extra):
            return plain(hidden_states=latents, timestep=t.expand(len(latents)), return_dict=False,
                         encoder_hidden_states=cond.prompt_hidden[rows],
                         pooled_projections=cond.prompt_pooled[rows], **extra)[0]  # fmt: skip

        for i, t in enumerate(scheduler.timesteps):
            conditional, unconditional = predict(slice(None), torch.cat([x, x]), t).chunk(2)
            velocity = unconditional + cfg * (conditional - unconditional)
            if steps * 0.01 < i < steps * 0.35:
                window.append(i)
                velocity += scale * (conditional - predict(slice(0, 2), x, t, skip_layers=[1]))
            x = scheduler.step(velocity, t, x, return_dict=False)[0]
        ours = sample(model, SCENES, settings, x_init=noise, decode=False)
        without = dataclasses.replace(settings, skip_layers=None)
        off = sample(model, SCENES, without, x_init=noise, decode=False)
        one_row = [sample(model, SCENES, s.override(cfg=1.0), x_init=noise, decode=False)
                   for s in (settings, without)]  # fmt: skip
    assert window == [1, 2, 3]
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-5)
    assert (ours - off).abs().amax() > 1e-3
    torch.testing.assert_close(*one_row, rtol=0, atol=0)  # diffusers: only under CFG


def test_skip_layer_guidance_is_refused_where_a_backbone_has_none():
    model = build_model(load_config("tiny-flux").model)
    with pytest.raises(ConfigError, match="skip_layers=\\[7, 8, 9\\]: this model takes no skip-layer"):
        sample(model, SCENES, SamplingSettings(steps=2, skip_layers=(7, 8, 9)))
    with pytest.raises(ConfigError, match="block indices >= 0"):
        SamplingSettings(skip_layers=[])


def test_idm_sits_on_the_joint_attention_of_every_block_only(models, monkeypatch):
    """SD3.5-medium: one IDM per block, on ``attn``; ``attn2`` keeps diffusers' attention without
    weights of idruid's, takes the layout keyword without a warning, and L_dis sees one set of
    maps per block."""
    warnings = []
    monkeypatch.setattr(attention_processor.logger, "warning", lambda message, *a: warnings.append(message))
    for variant, model in models.items():
        processors = model.transformer.attn_processors
        layers = model.transformer.config.num_layers
        idm = sorted(n for n, p in processors.items() if isinstance(p, LayoutJointAttnProcessor))
        assert idm == [f"transformer_blocks.{i}.attn.processor" for i in range(layers)]
        plain = sorted(n for n, p in processors.items() if type(p) is ImageAttnProcessor)
        dual = SD35_VARIANTS[variant]["dual_attention_layers"]
        assert plain == [f"transformer_blocks.{i}.attn2.processor" for i in dual]
        assert len(processors) == layers + len(dual)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and not any(".attn2." in n for n in trainable)
        assert all(n.startswith("adapter.") or ".attn.processor." in n for n in trainable)
        cond = model.encode_text(SCENES)
        with torch.no_grad():
            _, maps = model(torch.randn(2, *model.latent_shape), torch.tensor([0.5, 0.5]), cond,
                            record_attention=True)  # fmt: skip
        assert len(maps) == layers and maps[0][0].shape == (2, 2, 4, 64)  # (B, N, heads, 8x8 tokens)
    assert warnings == []


def test_the_layout_branch_queries_are_the_rms_normed_ones(models, monkeypatch):
    """With qk_norm the backbone's image queries pass its RMSNorm before attention; the shared-query
    branch (the presets' share_query) gets exactly those, not the raw projections."""
    model = models["medium"]
    seen = []
    original = LayoutJointAttnProcessor.instance_branch

    def spy(self, hidden_states, global_features, layout, backbone_query=None):
        seen.append((self, hidden_states, backbone_query))
        return original(self, hidden_states, global_features, layout, backbone_query)

    monkeypatch.setattr(LayoutJointAttnProcessor, "instance_branch", spy)
    with torch.no_grad():
        model(torch.randn(2, *model.latent_shape), torch.tensor([0.6, 0.2]), model.encode_text(SCENES))
    attention = {m.processor: m for m in model.transformer.modules() if hasattr(m, "processor")}
    assert len(seen) == model.transformer.config.num_layers
    for processor, hidden, query in seen:
        attn = attention[processor]
        assert attn.norm_q is not None and processor.to_q is None
        raw = attn.to_q(hidden).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        torch.testing.assert_close(query, attn.norm_q(raw))
        assert (query - raw).abs().max() > 1e-2


# ------------------------------------------------------------------ training, sampling, checkpoints
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_preset_trains_samples_and_keeps_only_idruids_weights(folders, variant, tmp_path):
    config = preset(variant, folders[variant], *RUN, "rl.algorithm=none", "steps=2")  # stage 1 only
    export = train(config, tmp_path / "run", progress=False)
    log = log_of(tmp_path / "run")
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
    assert all(r["l_dis"] is not None and np.isfinite(r["l_dis"]) for r in log)
    # the checkpoint: idruid's weights (adapter, IDM processors) and the base folder's config hash
    saved = load_file(str(export / "model.safetensors"))
    assert saved and all(k.startswith("adapter.") or ".attn.processor." in k for k in saved)
    meta = json.loads((export / "idruid.json").read_text())
    assert set(meta["base"]["configs"]) == {"transformer/config.json"}
    loaded = load_checkpoint(export)
    assert set(saved) == set(loaded.trainable_state_dict())
    assert loaded.transformer.config.qk_norm == "rms_norm"
    dual = SD35_VARIANTS[variant]["dual_attention_layers"]
    assert tuple(loaded.transformer.config.dual_attention_layers) == dual
    images = sample(loaded, SCENES, SamplingSettings(steps=2, cfg=2.0, shift=3.0))
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all() and images.abs().max() <= 1.0
    # round trip: the same predictions after save and load
    again = load_checkpoint(save_checkpoint(loaded, tmp_path / "again"))
    cond = loaded.encode_text(SCENES)
    x, sigma = torch.randn(2, *loaded.latent_shape), torch.tensor([0.7, 0.2])
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, cond)[0], again(x, sigma, cond)[0])


@pytest.mark.parametrize("variant", VARIANTS)
def test_rl_runs_and_resumes(folders, variant, tmp_path):
    """The RL stage (flow SDE policy, PPO, analytic detector on shapes prompts) from the first
    step; stopped after 2 steps and resumed for a third."""
    rl = ["rl.algorithm=ppo", "rl.start_fraction=0", "rl.sampling_steps=2", "rl.prompts=shapes",
          "rl.detector=analytic"]  # fmt: skip
    config = preset(variant, folders[variant], *RUN, *rl, "steps=2")
    train(config, tmp_path / "run", progress=False)
    config.steps = 3
    export = train(config, tmp_path / "run", progress=False)
    log = log_of(tmp_path / "run")
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    assert all(r["l_rl"] is not None for r in log)
    assert load_checkpoint(export).transformer.config.qk_norm == "rms_norm"


def test_rl_that_would_train_nothing_is_refused(folders, tmp_path):
    """A frozen backbone (only the layout branch trains) and rollouts on which the branch never
    runs (here layout_fraction 0; the authors' model, rounding down, at 0.3 of 3 steps): one line
    saying so, not a silent RL loss without gradient (training) or torch's "does not require
    grad" at the backward (rl-probe)."""
    rl = ["rl.algorithm=ppo", "rl.start_fraction=0", "rl.sampling_steps=3", "rl.prompts=shapes",
          "rl.detector=analytic", "lambda_dis=0"]  # fmt: skip
    config = preset("large", folders["large"], *RUN, *rl, "steps=1", "layout_fraction=0.0")
    with pytest.raises(ConfigError, match="trains nothing: .* layout_fraction 0.0 of rl.sampling_steps 3"):
        train(config, tmp_path / "run", progress=False)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_diffusers_pipeline_round_trips(models, variant, tmp_path):
    model = models[variant]
    config = load_config(f"sd35-{variant}")
    pipe = IDruidPipeline.from_model(model, config.sampling_settings())
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.shift == 3.0 and pipe.transformer is model.backbone
    pipe.save_pretrained(tmp_path / "saved")
    again = IDruidPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    assert again.sampling == config.sampling_settings()
    assert type(again.model.transformer.attn_processors["transformer_blocks.0.attn.processor"]) is (
        LayoutJointAttnProcessor
    )
    kwargs = {"num_inference_steps": 2, "output_type": "np", "guidance_scale": 2.0}
    inputs = ("a red circle", ["a red circle"], [[0.1, 0.1, 0.6, 0.6]])
    first = pipe(*inputs, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert first.shape == (1, 32, 32, 3) and np.isfinite(first).all()
    second = again(*inputs, generator=torch.Generator().manual_seed(0), **kwargs).images
    np.testing.assert_array_equal(second, first)
    # StableDiffusion3Pipeline's skip-layer guidance arguments reach the sampler
    kwargs.update(num_inference_steps=4, skip_layer_guidance_stop=0.9)
    plain = pipe(*inputs, generator=torch.Generator().manual_seed(0), **kwargs).images
    skipped = pipe(*inputs, generator=torch.Generator().manual_seed(0), skip_guidance_layers=[1], **kwargs)
    assert np.abs(skipped.images - plain).max() > 1e-4
