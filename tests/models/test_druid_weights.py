"""Loading the authors' checkpoint folder (models/druid_weights.py) from tiny fake checkpoints
written with their names: single file, sharded, bf16, and the errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import TINY_DRUID as TINY

from idruid.models.druid_arch import DruidSD3Transformer
from idruid.models.druid_weights import (
    INDEX,
    WEIGHTS,
    DruidCheckpointError,
    is_druid_folder,
    load_into,
    load_transformer,
    save_folder,
)

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DruidSD3Transformer(max_boxes=10, **TINY)


def same_weights(a, b, atol=0.0):
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.allclose(sa[k], sb[k].to(sa[k].dtype), atol=atol) for k in sa)


@pytest.mark.parametrize("shards", [1, 3])
def test_single_and_sharded_folders_load_exactly(tmp_path, model, shards):
    folder = save_folder(model, tmp_path / "druid", shards=shards)
    assert is_druid_folder(folder) and (folder / (WEIGHTS if shards == 1 else INDEX)).is_file()
    config = json.loads((folder / "config.json").read_text())
    assert (
        config["_class_name"] == "AdapterLayoutSD3Transformer2DModel" and config["max_boxes_per_image"] == 10
    )
    loaded = load_transformer(folder)
    assert same_weights(model, loaded) and loaded.pos_embed.pos_embed.dtype == torch.float32


def test_bf16_folder_loads_as_float32(tmp_path, model):
    folder = save_folder(model, tmp_path / "bf16", dtype=torch.bfloat16)
    assert next(iter(load_file(str(folder / WEIGHTS)).values())).dtype == torch.bfloat16
    loaded = load_transformer(folder)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert same_weights(model, loaded, atol=1e-2) and not same_weights(model, loaded)


def edit_weights(folder, edit):
    state = load_file(str(folder / WEIGHTS))
    edit(state)
    save_file(state, str(folder / WEIGHTS))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s.pop("position_net.null_position_feature"),
            r"1 missing \(position_net.null_position_feature\)",
        ),
        (
            lambda s: s.__setitem__("position_net.extra", torch.zeros(3)),
            r"1 unexpected \(position_net.extra\)",
        ),
        (
            lambda s: s.__setitem__("transformer_blocks.0.bbox_forward.bias", torch.zeros(5)),
            r"1 mis-shaped .*transformer_blocks.0.bbox_forward.bias: \(5,\) vs \(32,\)",
        ),
        (
            lambda s: s.__setitem__("transformer_blocks.0.attn.to_q.lora_A.weight", torch.zeros(4, 32)),
            "LoRA-style key 'transformer_blocks.0.attn.to_q.lora_A.weight'",
        ),
    ],
)
def test_bad_weights_are_named(tmp_path, model, edit, message):
    folder = save_folder(model, tmp_path / "bad")
    edit_weights(folder, edit)
    with pytest.raises(DruidCheckpointError, match=message):
        load_transformer(folder)


def test_bad_folders_are_refused(tmp_path, model):
    with pytest.raises(DruidCheckpointError, match="does not exist"):
        load_transformer(tmp_path / "nowhere")
    lora = tmp_path / "lora"
    save_folder(model, lora)
    (lora / WEIGHTS).rename(lora / "pytorch_lora_weights.safetensors")
    with pytest.raises(DruidCheckpointError, match="pytorch_lora_weights.safetensors is a LoRA file"):
        load_transformer(lora)
    other = tmp_path / "sd3"
    save_folder(model, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(config, _class_name="SD3Transformer2DModel")))
    assert not is_druid_folder(other)
    with pytest.raises(DruidCheckpointError, match="expected 'AdapterLayoutSD3Transformer2DModel'"):
        load_transformer(other)
    sharded = save_folder(model, tmp_path / "sharded", shards=2)
    next(sharded.glob("*-00002-of-00002.safetensors")).unlink()
    with pytest.raises(DruidCheckpointError, match="missing shards"):
        load_transformer(sharded)
    wider = save_folder(model, tmp_path / "wider")
    config = json.loads((wider / "config.json").read_text())
    (wider / "config.json").write_text(json.dumps(dict(config, pooled_projection_dim=21)))
    with pytest.raises(DruidCheckpointError, match="mis-shaped"):
        load_transformer(wider)


def test_load_into_an_existing_model(tmp_path, model):
    folder = save_folder(model, tmp_path / "druid")
    torch.manual_seed(1)
    target = DruidSD3Transformer(max_boxes=10, **TINY)
    assert not same_weights(model, target)
    load_into(target, folder)
    assert same_weights(model, target)
