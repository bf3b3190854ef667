"""Reading and writing the I-DRUID authors' checkpoint folder (hub ``FlyingRoastDuck/I_DRUID``).

The folder holds ``config.json`` (``_class_name`` AdapterLayoutSD3Transformer2DModel, SD3's
fields plus ``attention_type`` and ``max_boxes_per_image``) and the weights, one
``diffusion_pytorch_model.safetensors`` or shards listed in its ``.index.json``, fp32 or bf16.
Loading is exact: every tensor of the architecture, nothing more, each of its shape, else an
error naming what is missing, unexpected or mis-shaped. The transformer is kept in float32, as
their pipeline keeps it (bf16 only under autocast).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import DruidCheckpointError
from ..textfile import read_json_object
from .druid_arch import DruidSD3Transformer

CLASS_NAME = "AdapterLayoutSD3Transformer2DModel"
WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = WEIGHTS + ".index.json"
LORA_FILES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors")
SD3_FIELDS = (
    "sample_size",
    "patch_size",
    "in_channels",
    "num_layers",
    "attention_head_dim",
    "num_attention_heads",
    "joint_attention_dim",
    "caption_projection_dim",
    "pooled_projection_dim",
    "out_channels",
    "pos_embed_max_size",
)


def is_druid_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a config.json of the authors' transformer class."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == CLASS_NAME
    except (json.JSONDecodeError, AttributeError):
        return False


def read_config(path: str | Path) -> dict:
    """The folder's config as ``DruidSD3Transformer`` keyword arguments."""
    folder = Path(path)
    if not folder.is_dir():
        raise DruidCheckpointError(f"I-DRUID checkpoint '{folder}': folder does not exist")
    file = folder / "config.json"
    if not file.is_file():
        raise DruidCheckpointError(f"I-DRUID checkpoint '{folder}': no config.json")
    config = read_json_object(file, DruidCheckpointError, f"I-DRUID checkpoint '{folder}': config.json")
    if config.get("_class_name") != CLASS_NAME:
        raise DruidCheckpointError(
            f"I-DRUID checkpoint '{folder}': config.json has _class_name {config.get('_class_name')!r}, "
            f"expected {CLASS_NAME!r}"
        )
    if config.get("attention_type", "layout") != "layout":
        raise DruidCheckpointError(
            f"I-DRUID checkpoint '{folder}': attention_type {config['attention_type']!r} (only 'layout')"
        )
    missing = [key for key in SD3_FIELDS if key not in config]
    if missing:
        raise DruidCheckpointError(f"I-DRUID checkpoint '{folder}': config.json lacks {', '.join(missing)}")
    kwargs = {key: config[key] for key in SD3_FIELDS}
    kwargs["max_boxes"] = int(config.get("max_boxes_per_image", 10))
    return kwargs


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of the folder: the single file, or the shards its index names."""
    if (folder / INDEX).is_file():
        try:
            weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DruidCheckpointError(f"I-DRUID checkpoint '{folder}': {INDEX} has no weight_map") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise DruidCheckpointError(f"I-DRUID checkpoint '{folder}': missing shards {', '.join(absent)}")
        return files
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    lora = [name for name in LORA_FILES if (folder / name).is_file()]
    if lora:
        raise DruidCheckpointError(
            f"I-DRUID checkpoint '{folder}': {lora[0]} is a LoRA file; the authors' checkpoint is a "
            f"full transformer ({WEIGHTS})"
        )
    raise DruidCheckpointError(f"I-DRUID checkpoint '{folder}': no {WEIGHTS} nor {INDEX}")


def read_state(path: str | Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Every tensor of the folder, cast to ``dtype``; LoRA-style keys are refused."""
    folder = Path(path)
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(folder):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if "lora_" in key or key.endswith(".alpha"):
                    raise DruidCheckpointError(
                        f"I-DRUID checkpoint '{folder}': {file.name} holds LoRA-style key '{key}'; "
                        "the authors' checkpoint is a full transformer"
                    )
                state[key] = handle.get_tensor(key).to(dtype)
    return state


def check_state(
    folder: str | Path, found: Mapping[str, torch.Size], expected: Mapping[str, torch.Size]
) -> None:
    """Refuse a state whose names or shapes differ from the architecture's, naming them."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shaped = sorted(k for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]))
    if not (missing or unexpected or shaped):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
    if shaped:
        details = ", ".join(f"{k}: {tuple(found[k])} vs {tuple(expected[k])}" for k in shaped[:3])
        parts.append(f"{len(shaped)} mis-shaped (found vs expected: {details})")
    raise DruidCheckpointError(
        f"I-DRUID checkpoint '{folder}': weights do not match the architecture of its config.json: "
        + "; ".join(parts)
    )


def build_empty(config: dict) -> DruidSD3Transformer:
    """Their architecture on the meta device (no memory), for checks and loading."""
    with torch.device("meta"):
        return DruidSD3Transformer(**config)


def load_transformer(path: str | Path) -> DruidSD3Transformer:
    """Their transformer with the folder's weights, float32, on the CPU, in eval mode."""
    config = read_config(path)
    model = build_empty(config)
    state = read_state(path)
    check_state(
        path, {k: v.shape for k, v in state.items()}, {k: v.shape for k, v in model.state_dict().items()}
    )
    model.load_state_dict(state, assign=True)
    return model.eval()


def load_into(model: torch.nn.Module, path: str | Path) -> None:
    """Copy the folder's weights into an existing ``DruidSD3Transformer`` (``init_from``); under
    peft LoRA its adapted layers' weights live at ``<name>.base_layer``, and LoRA keys keep theirs."""
    state = read_state(path)
    own = {k.replace(".base_layer", ""): k for k in model.state_dict() if "lora_" not in k}
    expected = {name: model.state_dict()[key].shape for name, key in own.items()}
    check_state(path, {k: v.shape for k, v in state.items()}, expected)
    with torch.no_grad():
        params = dict(model.state_dict(keep_vars=True))
        for name, key in own.items():
            params[key].copy_(state[name])


def save_folder(
    model: DruidSD3Transformer,
    path: str | Path,
    dtype: torch.dtype | None = None,
    shards: int = 1,
) -> Path:
    """Write ``model`` in the authors' folder format (config.json + one file or ``shards`` shards),
    in ``dtype`` (None: as it is): what their checkpoint looks like, for tests and exports."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": CLASS_NAME, "_diffusers_version": "0.33.0", "attention_type": "layout"}
    config.update({key: model.config[key] for key in SD3_FIELDS})
    config["max_boxes_per_image"] = model.max_boxes
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    state = {
        k: (v if dtype is None else v.to(dtype)).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    keys = sorted(state)
    if shards <= 1:
        save_file(state, str(folder / WEIGHTS))
        return folder
    weight_map = {}
    for index in range(shards):
        name = f"diffusion_pytorch_model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[index::shards]
        save_file({k: state[k] for k in part}, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    return folder
