"""IDruidPipeline: the diffusers pipeline over idruid's sampling loop (idruid.pipeline)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ImagePipelineOutput
from PIL import Image

from idruid.checkpoint import CheckpointError, checkpoint_sampling
from idruid.config import ConfigError
from idruid.data.shapes import benchmark_layouts
from idruid.layout import LayoutError, save_layouts
from idruid.pipeline import IDruidPipeline

STEPS = 4  # fast; the same on both sides of every comparison
BOXES = [[0.05, 0.1, 0.45, 0.5], [0.5, 0.5, 0.95, 0.9]]
PHRASES = ["a red circle", "a blue square"]
PROMPT = "a red circle and a blue square"


@pytest.fixture(scope="module")
def pipe():
    pipe = IDruidPipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sam_layouts():
    """shapes-sam layouts with 2, 3 and 4 instances (and their own seeds)."""
    layouts = benchmark_layouts("shapes-sam")
    return [layouts[0], layouts[100], layouts[200]]


def test_pipeline_equals_idruid_generate(pipe, tmp_path):
    from idruid.cli import main

    for k, layout in enumerate(sam_layouts()):
        save_layouts([layout], tmp_path / f"{k}.json")
        assert main(["generate", str(tmp_path / f"{k}.json"), "--out", str(tmp_path / f"{k}.png"),
                     "--steps", str(STEPS)]) == 0  # fmt: skip
        ours = pipe(
            layout.prompt,
            layout.captions,
            [list(box) for box in layout.boxes],
            num_inference_steps=STEPS,
            generator=seeded(layout.seed),
        ).images[0]
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(Image.open(tmp_path / f"{k}.png")))


def test_settings_come_from_the_checkpoint(pipe):
    assert pipe.sampling == checkpoint_sampling(None)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.scheduler.config.shift == pipe.sampling.shift
    assert set(pipe.components) == {"model", "scheduler"} and pipe.transformer is pipe.model.backbone
    with pytest.raises(CheckpointError, match="no such folder"):
        IDruidPipeline.from_pretrained("no/such/folder")


def test_torch_dtype(pipe):
    half = IDruidPipeline.from_pretrained(torch_dtype=torch.bfloat16)
    half.set_progress_bar_config(disable=True)
    assert half.dtype == torch.bfloat16 and half.model.backbone.dtype == torch.bfloat16
    kwargs = {"num_inference_steps": STEPS, "output_type": "np", "generator": seeded(3)}
    full = pipe(PROMPT, PHRASES, BOXES, **kwargs).images
    kwargs["generator"] = seeded(3)
    error = np.abs(half(PROMPT, PHRASES, BOXES, **kwargs).images - full)
    assert 0 < error.mean() < 0.01 and error.max() < 0.2  # bf16 weights: close, not equal


def test_layout_objects_and_seeds(pipe):
    layout = sam_layouts()[1]
    by_layout = pipe(layouts=[layout], num_inference_steps=STEPS, output_type="np").images
    by_args = pipe(
        layout.prompt, layout.captions, [list(b) for b in layout.boxes],
        num_inference_steps=STEPS, generator=seeded(layout.seed), output_type="np",
    ).images  # fmt: skip
    np.testing.assert_array_equal(by_layout, by_args)  # no generator: the layout's own seed


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert index["sampling"] == pipe.sampling.to_dict()
    again = IDruidPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": STEPS, "output_type": "np"}
    first = pipe(PROMPT, PHRASES, BOXES, generator=seeded(5), **kwargs).images
    np.testing.assert_array_equal(again(PROMPT, PHRASES, BOXES, generator=seeded(5), **kwargs).images, first)
    # the model folder is an idruid checkpoint, and saving again over the folder works
    assert IDruidPipeline.from_pretrained(tmp_path / "saved" / "model").sampling == pipe.sampling
    again.save_pretrained(tmp_path / "saved")


def test_diffusers_from_pretrained_loads_a_saved_folder(pipe, tmp_path):
    """diffusers' own loader reads the folder through its custom pipeline and component files,
    which run code: diffusers >= 0.38 refuses them without trust_remote_code=True."""
    import diffusers
    from packaging.version import Version

    pipe.save_pretrained(tmp_path / "saved")
    if Version(diffusers.__version__) >= Version("0.38"):
        with pytest.raises(ValueError, match="trust_remote_code"):
            DiffusionPipeline.from_pretrained(tmp_path / "saved")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    assert type(loaded).__name__ == "IDruidPipeline" and loaded.sampling == pipe.sampling
    loaded.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": STEPS, "output_type": "np"}
    np.testing.assert_array_equal(
        loaded(PROMPT, PHRASES, BOXES, generator=seeded(2), **kwargs).images,
        pipe(PROMPT, PHRASES, BOXES, generator=seeded(2), **kwargs).images,
    )


def test_callback_sees_every_step_and_may_replace_the_latents(pipe):
    seen = []

    def record(p, i, t, tensors):
        seen.append((i, float(t), tuple(tensors["latents"].shape)))
        return tensors

    pipe(PROMPT, PHRASES, BOXES, num_inference_steps=5, callback_on_step_end=record, output_type="np")
    assert [i for i, _, _ in seen] == list(range(5))
    assert [t for _, t, _ in seen] == pipe.scheduler.timesteps.tolist()
    assert all(shape == (1, *pipe.model.latent_shape) for _, _, shape in seen)

    def zero(p, i, t, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if i == 4 else tensors

    zeroed = pipe(PROMPT, PHRASES, BOXES, num_inference_steps=5, callback_on_step_end=zero,
                  output_type="latent")  # fmt: skip
    assert torch.count_nonzero(zeroed.images) == 0


def test_two_images_per_prompt_differ(pipe):
    images = pipe(PROMPT, PHRASES, BOXES, num_inference_steps=STEPS, num_images_per_prompt=2,
                  generator=seeded(0), output_type="np").images  # fmt: skip
    assert images.shape == (2, 32, 32, 3) and np.abs(images[0] - images[1]).max() > 0.1
    # the first image of a fresh generator is the single image of that seed (up to batching's floats)
    single = pipe(PROMPT, PHRASES, BOXES, num_inference_steps=STEPS, generator=seeded(0), output_type="np")
    np.testing.assert_allclose(images[:1], single.images, atol=1e-5, rtol=0)


def test_output_types_agree(pipe):
    def run(kind):
        return pipe(PROMPT, PHRASES, BOXES, num_inference_steps=STEPS, generator=seeded(1), output_type=kind)

    pil, array, tensor, latent = (run(kind).images for kind in ("pil", "np", "pt", "latent"))
    assert isinstance(run("np"), ImagePipelineOutput) and isinstance(pil[0], Image.Image)
    assert array.shape == (1, 32, 32, 3) and array.dtype == np.float32
    assert 0 <= array.min() <= array.max() <= 1
    assert tensor.shape == (1, 3, 32, 32)
    np.testing.assert_array_equal(tensor.permute(0, 2, 3, 1).numpy(), array)
    np.testing.assert_array_equal((array[0] * 255).round().astype(np.uint8), np.asarray(pil[0]))
    assert latent.shape == (1, *pipe.model.latent_shape)
    decoded = (pipe.model.decode_latents(latent).clamp(-1, 1) + 1) / 2
    np.testing.assert_array_equal(decoded.numpy(), tensor.numpy())
    assert isinstance(pipe(PROMPT, PHRASES, BOXES, num_inference_steps=1, return_dict=False), tuple)


def test_a_batch_of_different_instance_counts_equals_one_at_a_time(pipe):
    layouts = sam_layouts()  # 2, 3 and 4 instances
    prompts = [layout.prompt for layout in layouts]
    phrases = [layout.captions for layout in layouts]
    boxes = [[list(b) for b in layout.boxes] for layout in layouts]
    batch = pipe(prompts, phrases, boxes, num_inference_steps=STEPS, output_type="np",
                 generator=[seeded(10 + k) for k in range(3)]).images  # fmt: skip
    for k in range(3):
        alone = pipe(prompts[k], phrases[k], boxes[k], num_inference_steps=STEPS, output_type="np",
                     generator=seeded(10 + k)).images  # fmt: skip
        np.testing.assert_allclose(batch[k : k + 1], alone, atol=1e-4, rtol=0)


def test_negative_prompt_reaches_the_unconditional_branch(pipe):
    kwargs = {"num_inference_steps": STEPS, "output_type": "np"}
    plain = pipe(PROMPT, PHRASES, BOXES, generator=seeded(4), **kwargs).images
    empty = pipe(PROMPT, PHRASES, BOXES, generator=seeded(4), negative_prompt="", **kwargs).images
    other = pipe(PROMPT, PHRASES, BOXES, generator=seeded(4), negative_prompt="a green disc", **kwargs).images
    np.testing.assert_allclose(empty, plain, atol=1e-5, rtol=0)
    assert np.abs(other - plain).max() > 1e-3


def test_bad_layouts_give_one_line_errors(pipe):
    with pytest.raises(LayoutError, match=r"^instances\[1\]\.box: x1 must be greater than x0"):
        pipe(PROMPT, PHRASES, [BOXES[0], [0.6, 0.5, 0.4, 0.9]])
    with pytest.raises(LayoutError, match=r"^layouts\[1\]\.instances\[0\]\.box: x1=1\.5 is outside"):
        pipe([PROMPT, PROMPT], [PHRASES, ["a circle"]], [BOXES, [[0.1, 0.1, 1.5, 0.9]]])
    with pytest.raises(LayoutError, match="2 phrases need 2 boxes, got 1"):
        pipe(PROMPT, PHRASES, BOXES[:1])
    with pytest.raises(LayoutError, match=r"^prompt: missing or empty"):
        pipe("  ", PHRASES, BOXES)
    with pytest.raises(LayoutError, match="2 prompts, 1 phrase lists"):
        pipe([PROMPT, PROMPT], [PHRASES], [BOXES])
    with pytest.raises(ValueError, match="output_type 'jpg'"):
        pipe(PROMPT, PHRASES, BOXES, output_type="jpg")


def test_swapping_the_scheduler_changes_the_grid(pipe):
    kwargs = {"num_inference_steps": STEPS, "output_type": "np"}
    plain = pipe(PROMPT, PHRASES, BOXES, generator=seeded(6), **kwargs).images
    shifted = IDruidPipeline(pipe.model, FlowMatchEulerDiscreteScheduler(shift=3.0), pipe.config.sampling)
    shifted.set_progress_bar_config(disable=True)
    assert np.abs(shifted(PROMPT, PHRASES, BOXES, generator=seeded(6), **kwargs).images - plain).max() > 1e-3
    assert shifted.scheduler.sigmas[1] > pipe.scheduler.sigmas[1]


@pytest.mark.parametrize("backbone", ["sd3", "sd15"])
def test_pipelines_on_diffusers_folders_round_trip(backbone, tmp_path):
    from tiny_models import build_tiny_sd3_folder, build_tiny_sd15_folder

    from idruid.config import ModelConfig
    from idruid.models import build_model

    build = {"sd3": build_tiny_sd3_folder, "sd15": build_tiny_sd15_folder}[backbone]
    folder = build(tmp_path / "base")
    torch.manual_seed(0)
    model = build_model(ModelConfig(
        backbone=backbone, base_model=str(folder), text_encoder="base", codec="vae",
        prompt_max_length={"sd3": 77 + 256, "sd15": 77}[backbone], idm_hidden=16, geometry_rank=8,
    )).eval()  # fmt: skip
    pipe = IDruidPipeline.from_model(model)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler if backbone == "sd3" else DDIMScheduler)
    assert (pipe.transformer if backbone == "sd3" else pipe.unet) is model.backbone
    pipe.save_pretrained(tmp_path / "saved")
    again = IDruidPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": 2, "output_type": "np", "guidance_scale": 2.0}
    first = pipe(PROMPT, PHRASES, BOXES, generator=seeded(0), **kwargs).images
    assert first.shape == (1, 32, 32, 3) and np.isfinite(first).all()
    np.testing.assert_array_equal(again(PROMPT, PHRASES, BOXES, generator=seeded(0), **kwargs).images, first)


def test_lora_weights_load_into_the_backbone(pipe):
    pytest.importorskip("peft")
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from idruid.checkpoint import load_checkpoint

    own = IDruidPipeline.from_model(load_checkpoint(), pipe.sampling)
    own.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": STEPS, "output_type": "np"}
    before = own(PROMPT, PHRASES, BOXES, generator=seeded(8), **kwargs).images
    # a LoRA of the embedded transformer's attention, made with peft and saved in diffusers' format
    donor = load_checkpoint().backbone
    donor.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["transformer_blocks.0.attn.to_q"]))
    with torch.no_grad():
        for name, param in donor.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    state = {f"transformer.{k}": v for k, v in get_peft_model_state_dict(donor).items()}
    own.load_lora_weights(state, adapter_name="test")
    assert any("lora_A" in n for n, _ in own.model.backbone.named_parameters())
    assert not any("processor" in n and "lora_" in n for n, _ in own.model.backbone.named_parameters())
    after = own(PROMPT, PHRASES, BOXES, generator=seeded(8), **kwargs).images
    assert np.abs(after - before).max() > 1e-3


def test_importing_idruid_does_not_import_diffusers():
    code = "import sys, idruid; assert 'diffusers' not in sys.modules; assert idruid.IDruidPipeline.__name__"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_model_cpu_offload_hooks_give_the_same_image(pipe):
    """The offload hooks of diffusers (accelerate) on the one ``model`` component; on a CPU-only
    machine the "accelerator" is the CPU, which checks the mechanics, not the memory saving."""
    from idruid.checkpoint import load_checkpoint

    own = IDruidPipeline.from_model(load_checkpoint(), pipe.sampling)
    own.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": STEPS, "output_type": "np"}
    before = own(PROMPT, PHRASES, BOXES, generator=seeded(9), **kwargs).images
    own.enable_model_cpu_offload(device="cpu")
    assert hasattr(own.model, "_hf_hook")
    np.testing.assert_array_equal(own(PROMPT, PHRASES, BOXES, generator=seeded(9), **kwargs).images, before)


def test_the_authors_checkpoint_on_an_sd3_folder_equals_idruid_generate(tmp_path):
    from tiny_models import build_tiny_druid_folder, build_tiny_sd3_folder

    from idruid.cli import main

    base = build_tiny_sd3_folder(tmp_path / "sd3")
    folder = build_tiny_druid_folder(tmp_path / "druid")
    with pytest.raises(ConfigError, match="SD3 folder is required"):
        IDruidPipeline.from_pretrained(folder)
    pipe = IDruidPipeline.from_pretrained(folder, base_model=base)
    pipe.set_progress_bar_config(disable=True)
    assert (pipe.sampling.steps, pipe.sampling.cfg, pipe.sampling.shift) == (50, 7.0, 3.0)  # theirs
    layout = sam_layouts()[0]
    save_layouts([layout], tmp_path / "layout.json")
    command = ["generate", str(tmp_path / "layout.json"), "--checkpoint", str(folder), "--base", str(base)]
    assert main([*command, "--out", str(tmp_path / "cli.png"), "--steps", "3"]) == 0
    ours = pipe(layouts=[layout], num_inference_steps=3, generator=seeded(layout.seed)).images[0]
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(Image.open(tmp_path / "cli.png")))
    pipe.save_pretrained(tmp_path / "saved")  # their branch only, on the recorded SD3 folder
    again = IDruidPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    same = again(layouts=[layout], num_inference_steps=3, generator=seeded(layout.seed)).images[0]
    np.testing.assert_array_equal(np.asarray(same), np.asarray(ours))
