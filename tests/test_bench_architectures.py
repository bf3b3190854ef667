"""benchmarks/bench_architectures.py: its analytic FLOP counts against FlopCounterMode on tiny models
(the script checks them at full size), and its GPU timing of FLUX.1-dev run on the CPU at a tiny size."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_architectures as bench  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# FLUX.1-dev's structure (guidance embedding, 2x2-packed 16-channel latents) at a tiny width
TINY_FLUX = {
    **bench.FLUX_DEV,
    "num_layers": 1,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 24,
    "pooled_projection_dim": 20,
    "axes_dims_rope": (4, 6, 6),
}


@pytest.mark.parametrize("single_blocks", bench.FLUX_SINGLE_BLOCKS)
def test_flux_flop_counts_are_flop_counter_modes(single_blocks):
    side, text, instances = 8, 7, 3
    tokens = (side // 2) ** 2
    torch.manual_seed(0)
    transformer = bench.flux_transformer(TINY_FLUX)
    plain_params = bench.count(transformer.parameters())
    latents, sigma, cond = bench.inputs(side, text, instances, "cpu", text=bench.flux_text(TINY_FLUX))
    backbone = bench.flux_backbone_flops(tokens, text, TINY_FLUX)
    assert bench.flux_plain_flops(transformer, latents, sigma, cond) == backbone
    model = bench.flux_layout_model(single_blocks, TINY_FLUX, side, transformer)
    assert bench.measured_flops(model, latents, sigma, cond, False) == backbone
    branch = bench.flux_branch_flops(tokens, instances, model.config, single_blocks, TINY_FLUX)
    assert branch > 0
    assert bench.measured_flops(model, latents, sigma, cond, True) == backbone + branch
    params = bench.flux_param_counts(model)
    assert params.backbone == plain_params  # the processors are counted apart
    assert params.single_layers == (0 if single_blocks == "none" else 2)
    assert model.config.share_query  # the flux-dev preset's setting


def test_sd3_counts_on_the_meta_device():
    """The meta-device path of the SD3 rows (Conditioning's fields, guidance None included)."""
    arch = {**bench.SD3_MEDIUM, "num_layers": 2, "num_attention_heads": 2, "caption_projection_dim": 128}
    with torch.device("meta"):
        model = bench.layout_model(share_query=True, arch=arch)
    side, instances = 16, 4
    tokens = (side // arch["patch_size"]) ** 2
    latents, sigma, cond = bench.inputs(side, bench.SD3_PROMPT_TOKENS, instances, "meta")
    assert cond.boxes.is_meta and cond.guidance is None
    backbone = bench.backbone_flops(tokens, bench.SD3_PROMPT_TOKENS, 2, arch)
    branch = bench.branch_flops(tokens, instances, 2, model.config, arch)
    with bench.untrimmed():
        assert bench.measured_flops(model, latents, sigma, cond, False) == backbone
        assert bench.measured_flops(model, latents, sigma, cond, True) == backbone + branch


def test_flux_gpu_timing_runs_on_the_cpu_at_a_tiny_size():
    """What the script times on a GPU at 1024 px (bf16 autocast, frozen transformer, gradient
    checkpointing), run through on the CPU."""
    rows = bench.flux_step_times(TINY_FLUX, 8, 6, repeats=1, device="cpu")
    assert [row.name for row in rows] == [
        "transformer alone (branch off)",
        *(f"+ adapter + IDM, single_blocks {single}" for single in bench.FLUX_SINGLE_BLOCKS),
    ]
    assert all(row.error is None and row.peak_gib is None and row.forward > 0 for row in rows)
    assert rows[0].train_step is None and all(row.train_step > 0 for row in rows[1:])
    assert "train step" in rows[1].line(64)


def test_flux_training_step_trains_the_branches_only():
    """The timed training step updates the adapter and the branches, never the frozen transformer."""
    torch.manual_seed(0)
    model = bench.flux_layout_model("idm", TINY_FLUX, 8)
    bench.freeze_backbone(model)
    model.transformer.enable_gradient_checkpointing()
    latents, sigma, cond = bench.inputs(8, 6, 3, "cpu", text=bench.flux_text(TINY_FLUX))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    bench.sd3_steps(model, latents, sigma, cond, True, torch.bfloat16)["train step"]()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(".processor." in name or name.startswith("adapter.") for name in changed)
    assert any("single_transformer_blocks" in name for name in changed)
