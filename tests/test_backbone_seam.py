"""The backbone seam (models/registry.py): nothing outside models/ branches on a backbone's name
or a checkpoint format, and a new backbone is one module and one registry line."""

from __future__ import annotations

import ast
from dataclasses import dataclass
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
BACKBONE_MODULES = {"sd3", "sd15", "sd3_druid", "druid_weights", "druid_arch", "flux", "flux_text"}


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


@dataclass
class PixArtNetwork:
    """The throwaway backbone's own settings (model.network)."""

    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 16
    patch_size: int = 4


class PixArtLayoutModel(LayoutModel):
    """diffusers' PixArt-alpha transformer, a class idruid has no code for, conditioned on layouts
    through the layout adapter alone: each instance's layout token joins the prompt's tokens."""

    backbone_attr = "transformer"
    network_class = PixArtNetwork

    def __init__(self, config: ModelConfig, text_encoder=None):
        from diffusers import PixArtTransformer2DModel

        super().__init__(config, text_encoder)
        self.process = FlowProcess()
        width, net = self.text_encoder.hidden_size, self.network
        self.transformer = PixArtTransformer2DModel(
            num_attention_heads=net.num_heads,
            attention_head_dim=net.head_dim,
            in_channels=config.in_channels,
            out_channels=config.in_channels,
            num_layers=net.num_layers,
            sample_size=self.latent_shape[-1],
            patch_size=net.patch_size,
            caption_channels=width,
            cross_attention_dim=net.num_heads * net.head_dim,
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
    name="pixart-test", model_class=PixArtLayoutModel, base_configs=("transformer/config.json",)
)
CONFIG = """
model:
  backbone: pixart-test
  use_idm: false  # the adapter-only branch: no IDM processors in PixArt's attention
  network: {num_layers: 2, head_dim: 32}
lambda_dis: 0
steps: 2
batch_size: 4
warmup_steps: 1
checkpoint_every: 1
eval_steps: 2
"""


@pytest.fixture
def pixart():
    register(THROWAWAY)
    yield THROWAWAY.name
    unregister(THROWAWAY.name)


def test_a_new_backbone_is_one_module_and_one_registry_line(pixart, tmp_path):
    """Registered from this file alone, it trains two steps and generates through the CLI."""
    run, config = tmp_path / "run", tmp_path / "pixart.yaml"
    config.write_text(CONFIG)
    assert main(["train", "--config", str(config), "--out", str(run), "model.network.num_heads=4"]) == 0
    export = run / "model"
    model = open_model(export)[0]
    assert model.config.backbone == pixart and model.transformer.config.num_attention_heads == 4
    assert model.config.network == {"num_layers": 2, "num_heads": 4, "head_dim": 32, "patch_size": 4}
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
