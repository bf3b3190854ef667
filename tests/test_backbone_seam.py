"""The backbone seam (models/registry.py): nothing outside models/ branches on a backbone's name
or a checkpoint format, and a new backbone is one module and one registry line."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idruid.cli import main
from idruid.config import ModelConfig
from idruid.diffusion import FlowProcess
from idruid.loader import open_model
from idruid.models.adapter import LayoutAdapter
from idruid.models.base import LayoutModel
from idruid.models.registry import Backbone, names, register, unregister

SRC = Path(__file__).resolve().parents[1] / "src" / "idruid"
# ModelConfig.backbone's default names the backbone a config builds when it names none
ALLOWED = {("config.py", "sd3")}
# a backbone's own modules, which only the registry names
BACKBONE_MODULES = {"sd3", "sd15", "sd3_druid", "druid_weights", "druid_arch"}


def outside_models() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "models" not in p.relative_to(SRC).parts[:1])


def test_no_backbone_name_or_format_branch_outside_models():
    found = []
    for file in outside_models():
        text = file.read_text()
        rel = str(file.relative_to(SRC))
        if "is_druid_folder" in text:
            found.append(f"{rel}: is_druid_folder (a checkpoint format check)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] in BACKBONE_MODULES:
                found.append(f"{rel}:{node.lineno}: imports models.{node.module.split('.')[-1]}")
            if isinstance(node, ast.Constant) and node.value in names() and (rel, node.value) not in ALLOWED:
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert not found, "ask idruid.models.registry instead:\n" + "\n".join(found)


# ----------------------------------------------------------------------------- a throwaway backbone


class PixArtLayoutModel(LayoutModel):
    """diffusers' PixArt-alpha transformer, a class idruid has no code for, conditioned on layouts
    through the layout adapter alone: each instance's layout token joins the prompt's tokens."""

    backbone_attr = "transformer"

    def __init__(self, config: ModelConfig, text_encoder=None):
        from diffusers import PixArtTransformer2DModel

        super().__init__(config, text_encoder)
        self.process = FlowProcess()
        width = self.text_encoder.hidden_size
        self.transformer = PixArtTransformer2DModel(
            num_attention_heads=config.num_heads,
            attention_head_dim=config.head_dim,
            in_channels=config.in_channels,
            out_channels=config.in_channels,
            num_layers=config.num_layers,
            sample_size=self.latent_shape[-1],
            patch_size=config.patch_size,
            caption_channels=width,
            cross_attention_dim=config.num_heads * config.head_dim,
            use_additional_conditions=False,
        )
        self.adapter = LayoutAdapter(width, width, config.fourier_freqs, self.text_encoder.pooled_size)
        self._finish_backbone()

    def forward(self, x_t, sigma, cond, layout_on=True, record_attention=False):
        x_t, cond = self.backbone_inputs(x_t, cond)
        context = cond.prompt_hidden
        if layout_on:
            cond = cond.trimmed()
            tokens = self.adapter(
                cond.boxes, cond.valid, cond.caption_hidden, cond.caption_pooled, cond.caption_mask
            ).tokens[:, :, 1]  # (B, N, D): the layout token of each instance slot
            keep = (cond.valid & (cond.enabled > 0)[:, None]).unsqueeze(-1).to(tokens.dtype)
            context = torch.cat([context, tokens * keep], dim=1)
        out = self.transformer(
            x_t,
            encoder_hidden_states=context,
            timestep=sigma * 1000.0,
            added_cond_kwargs={},
            return_dict=False,
        )[0]
        return out, []


THROWAWAY = Backbone(
    name="pixart-test",
    model_class=PixArtLayoutModel,
    base_configs=("transformer/config.json",),
    preset="tiny",
)


@pytest.fixture
def pixart():
    register(THROWAWAY)
    yield THROWAWAY.name
    unregister(THROWAWAY.name)


def test_a_new_backbone_is_one_module_and_one_registry_line(pixart, tmp_path):
    """Registered from this file alone, it trains two steps and generates through the CLI."""
    run = tmp_path / "run"
    overrides = [f"model.backbone={pixart}", "lambda_dis=0"]
    assert main(["train", "--backbone", pixart, "--out", str(run), *overrides]) == 0
    export = run / "model"
    assert export.is_dir() and open_model(export)[0].config.backbone == pixart
    layouts = tmp_path / "layouts.jsonl"
    layouts.write_text(
        '{"prompt": "a red circle and a blue square", "seed": 0, "instances": ['
        '{"caption": "a red circle", "box": [0.1, 0.1, 0.4, 0.4]},'
        '{"caption": "a blue square", "box": [0.5, 0.5, 0.9, 0.9]}]}\n'
    )
    out = tmp_path / "image.png"
    assert (
        main(["generate", str(layouts), "--checkpoint", str(export), "--out", str(out), "--steps", "3"]) == 0
    )
    image = np.asarray(Image.open(out))
    assert image.shape == (32, 32, 3) and image.std() > 0
