"""The authors' model behind idruid's model contract (models/sd3_druid.py): sampling through the
one loop with their settings, the mask-row switch, what trains and what is saved, loading their
folder from the CLI with an SD3 folder, and an RL fine-tuning smoke run through ``train``."""

import json

import numpy as np
import pytest
import torch
from tiny_models import build_tiny_druid_folder, build_tiny_sd3_folder

from idruid.checkpoint import load_checkpoint, load_trained_weights, save_checkpoint
from idruid.cli import main
from idruid.config import ConfigError, ModelConfig, load_config
from idruid.layout import Instance, Layout, save_layouts
from idruid.models import build_model
from idruid.models.druid_arch import is_layout_key
from idruid.models.druid_weights import save_folder
from idruid.models.sd3_druid import DruidLayoutModel, druid_config, druid_sampling, spatial_masks
from idruid.sampling import SamplingSettings, layout_steps, sample
from idruid.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ModelConfig(backbone="sd3-druid", network=dict(num_layers=2, num_heads=2, head_dim=32))
SCENES = [
    Layout("a red circle and a blue square", (
        Instance("a red circle", (0.05, 0.1, 0.45, 0.5)),
        Instance("a blue square", (0.5, 0.5, 0.95, 0.9)),
    ), seed=0),
    Layout("a green triangle", (Instance("a green triangle", (0.2, 0.2, 0.8, 0.7)),), seed=1),
]  # fmt: skip


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = DruidLayoutModel(TINY).eval()
    with torch.no_grad():  # their zero-initialised parts get values, so every path matters
        for name, param in model.transformer.named_parameters():
            if is_layout_key(name):
                param.add_(0.05 * torch.randn_like(param))
    return model


def test_the_layout_branch_trains_and_the_backbone_is_frozen(model):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(is_layout_key(n.removeprefix("transformer.")) for n in trainable)
    frozen = {n for n, p in model.transformer.named_parameters() if not p.requires_grad}
    assert frozen and not any(is_layout_key(n) for n in frozen)
    # without their folder the checkpoint holds the whole transformer, with it the branch only
    assert len(model.trainable_state_dict()) == len(model.transformer.state_dict())


def test_lora_adapts_the_backbones_attention_only():
    pytest.importorskip("peft")
    lora = build_model(ModelConfig(**{**TINY.__dict__, "lora_rank": 2}))
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    adapted = {n for n in trainable if "lora_" in n}
    assert adapted and all(".attn." in n for n in adapted)
    assert all(is_layout_key(n.removeprefix("transformer.")) for n in trainable - adapted)
    assert any(".bbox_fuser_block.to_q.weight" in n for n in trainable)  # the fuser trains whole


def test_sampling_runs_their_layout_steps_in_both_rows(model):
    calls = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((kwargs["layout_on"], args[2].enabled.tolist())),
        with_kwargs=True,
    )
    try:
        images = sample(model, SCENES, SamplingSettings(steps=20, cfg=7.0, layout_fraction=0.3))
    finally:
        hook.remove()
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert [on for on, _ in calls] == [True] * 6 + [False] * 14  # floor(0.3 * 20)
    assert calls[0][1] == [1.0, 1.0, 0.0, 0.0]  # conditional rows, then the unconditional ones
    again = sample(model, SCENES, SamplingSettings(steps=20, cfg=7.0, layout_fraction=0.3))
    assert torch.equal(images, again)


@pytest.mark.parametrize(("steps", "expected"), [(20, 6), (28, 8), (50, 15)])
def test_their_layout_step_counts(steps, expected):
    assert layout_steps(steps, 0.3, "floor") == expected
    assert layout_steps(28, 0.3) == 9  # idruid's ceil differs at 28
    with pytest.raises(ValueError, match="rounding"):
        layout_steps(steps, 0.3, "round")


def test_mask_rows_switch(model):
    cond = model.encode_text(SCENES)
    both = type(cond).cat([cond, model.unconditional(cond)])  # rows: cond, cond, uncond, uncond
    masks = {rows: spatial_masks(both, rows, (8, 8)) for rows in ("unconditional", "conditional", "both")}
    per_row = {rows: masks[rows].flatten(1).sum(1).gt(0).tolist() for rows in masks}
    assert per_row == {
        "unconditional": [False, False, True, True],
        "conditional": [True, True, False, False],
        "both": [True] * 4,
    }
    # a box [0.05, 0.1, 0.45, 0.5] on 8 x 8 cells: rows int(0.8)=0 .. int(4.0)=4, cols 0 .. int(3.6)=3
    assert masks["both"][0, 0].nonzero().amin(0).tolist() == [0, 0]
    assert masks["both"][0, 0].nonzero().amax(0).tolist() == [3, 2]
    with pytest.raises(ConfigError, match="druid_mask_rows"):
        spatial_masks(both, "paper", (8, 8))
    # the switch changes the prediction of the rows it moves the masks to and from
    x, sigma = torch.randn(4, 3, 32, 32), torch.full((4,), 0.6)
    outputs = {}
    for rows in ("unconditional", "conditional"):
        model.network.druid_mask_rows = rows
        with torch.no_grad():
            outputs[rows] = model(x, sigma, both)[0]
    model.network.druid_mask_rows = "unconditional"
    assert all((outputs["unconditional"][i] - outputs["conditional"][i]).abs().max() > 1e-5 for i in range(4))


def test_null_tokens_in_the_unconditional_row(model):
    """A row with enabled 0 gets ten copies of the null token whatever its captions are."""
    cond = model.unconditional(model.encode_text(SCENES))
    tokens = model.transformer.layout_tokens(
        cond.boxes, cond.caption_pooled, (cond.valid & (cond.enabled > 0)[:, None]).float()
    )
    assert torch.allclose(tokens, tokens[:1, :1].expand_as(tokens))


def test_refusals(model, tmp_path):
    with pytest.raises(ConfigError, match="lambda_dis=0"):
        model(torch.randn(1, 3, 32, 32), torch.ones(1), model.encode_text(SCENES[:1]), record_attention=True)
    folder = str(save_folder(model.transformer, tmp_path / "d"))
    for network, settings, message in [
        ({"druid_mask_rows": "paper"}, {}, "model.network.druid_mask_rows 'paper'"),
        ({"output": "x0"}, {}, "model.network.output: not a setting of the sd3-druid backbone"),
        ({"layout_rounding": "ceil"}, {}, "model.network.layout_rounding: not a setting"),  # theirs is floor
        # their folder's slot count rules
        ({"druid_weights": folder}, {"max_instances": 6}, "max_boxes_per_image is 10 but model.max_inst"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_model(ModelConfig(**{**TINY.__dict__, **settings, "network": {**TINY.network, **network}}))


def test_checkpoint_with_their_folder_saves_the_branch_only(tmp_path, model):
    folder = save_folder(model.transformer, tmp_path / "druid")
    config = ModelConfig(**{**TINY.__dict__, "network": {**TINY.network, "druid_weights": str(folder)}})
    loaded = build_model(config).eval()
    assert set(loaded.trainable_state_dict()) == {
        "transformer." + k for k in model.transformer.state_dict() if is_layout_key(k)
    }
    with torch.no_grad():
        for param in loaded.trainable_parameters():
            param.add_(0.01)
    save_checkpoint(loaded, tmp_path / "tuned")
    again = load_checkpoint(tmp_path / "tuned")
    cond = again.encode_text(SCENES)
    x, sigma = torch.randn(2, 3, 32, 32), torch.tensor([0.7, 0.3])
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, cond)[0], again(x, sigma, cond)[0])
    # init_from their folder: the same weights in a model built at random
    fresh = build_model(TINY)
    load_trained_weights(fresh, folder)
    state = fresh.transformer.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.transformer.state_dict().items())


def test_generate_from_their_folder_and_an_sd3_folder(tmp_path):
    base = build_tiny_sd3_folder(tmp_path / "sd3")
    folder = build_tiny_druid_folder(tmp_path / "druid", dtype=torch.bfloat16, shards=2)
    config = druid_config(folder, base)
    assert (config.model.resolution, config.shift, config.eval_steps, config.eval_cfg) == (16, 3.0, 50, 7.0)
    assert [druid_sampling(config, name).cfg for name in ("coco-mig", "layoutsam-eval")] == [7.0, 7.5]
    # fine-tuned on their folder and an SD3 folder: the checkpoint records both, stores the branch
    model = build_model(config.model).eval()
    assert model.layout_rounding == "floor" and model.network.druid_mask_rows == "unconditional"
    saved = save_checkpoint(model, tmp_path / "tuned")
    meta = json.loads((saved / "idruid.json").read_text())
    assert sorted(meta["base"]["configs"]) == [
        "text_encoder/config.json",
        "text_encoder_2/config.json",
        "vae/config.json",
    ]
    again = load_checkpoint(saved)
    cond = model.encode_text(SCENES)
    x, sigma = torch.randn(2, 16, 8, 8), torch.tensor([0.7, 0.3])
    with torch.no_grad():
        assert torch.equal(model(x, sigma, cond)[0], again(x, sigma, cond)[0])
    layouts = tmp_path / "layouts.jsonl"
    save_layouts(SCENES, layouts)
    out = tmp_path / "images"
    common = ["generate", str(layouts), "--checkpoint", str(folder), "--out", str(out), "--steps", "3"]
    assert main([*common, "--base", str(base)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png"]
    assert main(common) == 2  # no --base
    assert main([*common, "--base", str(tmp_path / "nowhere")]) == 2


def test_rl_fine_tuning_of_their_model_runs_and_resumes(tmp_path, model):
    folder = save_folder(model.transformer, tmp_path / "druid")
    overrides = [
        "model.backbone=sd3-druid",
        "model.output=velocity",  # settings of an older config at values this backbone ignores
        "model.layout_rounding=floor",
        f"init_from={folder}",
        "lambda_dis=0",
        "rl.algorithm=grpo",
        "rl.start_fraction=0",
        "rl.sampling_steps=4",  # their floor(0.3 x 4) = 1 layout step: at 3 none, and RL trains nothing
        "rl.batch_size=2",
        "rl.group_size=2",
        "checkpoint_every=1",
    ]
    config = load_config("tiny", overrides)
    config.steps = 2
    train(config, tmp_path / "run", progress=False)
    config.steps = 3
    export = train(config, tmp_path / "run", progress=False)  # resumes at step 3
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    assert all(r.get("l_rl") is not None for r in log)
    assert any(r.get("rl_grad_rl", 0.0) > 0 for r in log)  # the RL loss reaches the layout branch
    tuned = load_checkpoint(export).transformer.state_dict()
    start = model.transformer.state_dict()
    assert all(torch.equal(tuned[k], v) for k, v in start.items() if not is_layout_key(k))
    assert any(not torch.equal(tuned[k], v) for k, v in start.items() if is_layout_key(k))


def test_the_preset_names_the_folders_it_needs():
    config = load_config("sd3-druid")
    assert (config.eval_steps, config.eval_cfg, config.layout_fraction, config.shift) == (50, 7.0, 0.3, 3.0)
    assert config.model.resolution == 1024 and config.model.max_instances == 10 and config.lambda_dis == 0
    with pytest.raises(ConfigError, match="model.base_model, which is not set"):
        build_model(config.model)
    with pytest.raises(ConfigError, match="rl.prompts is not set"):
        config.rl.check()
