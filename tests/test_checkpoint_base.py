"""Checkpoints of a model built on a base folder (a tiny SD3 transformer saved like SD3-medium's
``transformer/``): only idruid's weights are stored, plus the folder's path and config hash, and a
missing or different base folder is refused."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from idruid.checkpoint import (
    EMBEDDED_CHECKPOINT,
    CheckpointError,
    load_checkpoint,
    load_trained_weights,
    read_checkpoint_meta,
    save_checkpoint,
)
from idruid.config import ModelConfig
from idruid.layout import Instance, Layout
from idruid.models.sd3 import SD3LayoutModel

pytestmark = pytest.mark.usefixtures("one_thread")


def build_base(folder: Path, num_layers: int = 1, seed: int = 0) -> Path:
    """A tiny SD3 diffusers folder holding ``transformer/`` (what SD3LayoutModel reads), sized
    for the embedded 64-wide text encoder and 32 px pixel-space images."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    SD3Transformer2DModel(
        sample_size=32,
        patch_size=4,
        in_channels=3,
        out_channels=3,
        num_layers=num_layers,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=64,
        caption_projection_dim=16,
        pooled_projection_dim=64,
        pos_embed_max_size=8,
    ).save_pretrained(folder / "transformer")
    return folder


def model_on(base: Path, seed: int = 1) -> SD3LayoutModel:
    torch.manual_seed(seed)
    config = ModelConfig(base_model=str(base), idm_hidden=16, geometry_rank=8)
    return SD3LayoutModel(config).eval()


def layouts() -> list[Layout]:
    return [
        Layout("a red circle and a blue square", (Instance("a red circle", (0.1, 0.1, 0.5, 0.5)),)),
        Layout("two shapes", (Instance("a blue square", (0.2, 0.3, 0.9, 0.8)),)),
    ]


def hand_sha256(config_file: Path) -> str:
    """The hash written out by hand: the config without diffusers' version / origin bookkeeping,
    compact JSON with sorted keys."""
    config = json.loads(config_file.read_text())
    for key in ("_diffusers_version", "_name_or_path", "_use_default_values"):
        config.pop(key, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def predict(model: SD3LayoutModel) -> torch.Tensor:
    torch.manual_seed(3)
    x, sigma = torch.randn(2, 3, 32, 32), torch.tensor([0.8, 0.3])
    with torch.no_grad():
        return model(x, sigma, model.encode_text(layouts()))[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(base folder, checkpoint folder, model) of a model trained on a tiny base."""
    root = tmp_path_factory.mktemp("based")
    base = build_base(root / "sd3-tiny")
    model = model_on(base)
    with torch.no_grad():  # make idruid's weights differ from any fresh initialisation
        for param in model.trainable_parameters():
            param.add_(0.05 * torch.randn_like(param))
    save_checkpoint(model, root / "ckpt")
    return base, root / "ckpt", model


def test_only_idruid_weights_are_saved_with_path_and_config_hash(saved):
    base, ckpt, model = saved
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("adapter.") or ".processor." in n for n in trainable)
    assert not any(n.startswith("transformer.pos_embed") for n in trainable)
    stored = set(load_file(str(ckpt / "model.safetensors")))
    idruid_keys = {k for k in model.state_dict() if k.startswith("adapter.") or ".processor." in k}
    assert stored == {k for k in idruid_keys if not k.startswith(model.unused_prefixes)}
    assert "transformer.transformer_blocks.0.attn.to_q.weight" not in stored
    assert not any(k.startswith("text_encoder.") for k in stored)
    record = read_checkpoint_meta(ckpt)["base"]
    assert record["path"] == str(base.resolve())
    transformer = record["configs"]["transformer/config.json"]
    assert transformer["sha256"] == hand_sha256(base / "transformer/config.json")
    assert transformer["config"]["num_layers"] == 1 and "_diffusers_version" not in transformer["config"]


def test_round_trip_loads_backbone_from_base_and_idruid_weights_from_checkpoint(saved):
    base, ckpt, model = saved
    loaded = load_checkpoint(ckpt)
    assert torch.equal(predict(loaded), predict(model))
    fresh = model_on(base, seed=7)  # other idruid weights, same backbone
    assert not torch.equal(predict(fresh), predict(model))
    load_trained_weights(fresh, ckpt)
    assert torch.equal(predict(fresh), predict(model))


def test_diffusers_bookkeeping_keys_do_not_change_the_hash(saved, tmp_path):
    base, ckpt, model = saved
    copy = tmp_path / "resaved"
    shutil.copytree(base, copy)
    config_file = copy / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config.update(_diffusers_version="9.9.9", _name_or_path="elsewhere/sd3")
    config_file.write_text(json.dumps(config, indent=4))  # other whitespace and key order too
    assert torch.equal(predict(load_checkpoint(ckpt, base_model=copy)), predict(model))


def test_mismatched_base_is_refused_naming_hashes_and_keys(saved, tmp_path):
    base, ckpt, _ = saved
    other = build_base(tmp_path / "sd3-other", num_layers=2)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt, base_model=other)
    message = str(err.value)
    assert "num_layers: 1 recorded vs 2 found" in message
    assert hand_sha256(other / "transformer/config.json") in message
    assert hand_sha256(base / "transformer/config.json") in message
    assert str(other / "transformer" / "config.json") in message and "idruid.json" in message
    assert "pos_embed_max_size" not in message  # only the keys that differ
    with pytest.raises(CheckpointError, match="num_layers: 1 recorded vs 2 found"):
        load_trained_weights(model_on(other), ckpt)
    with pytest.raises(CheckpointError, match="trained with base model .* this run's base model is none"):
        embedded = SD3LayoutModel(ModelConfig(idm_hidden=16, geometry_rank=8))  # same but the base
        load_trained_weights(embedded, ckpt)


def test_missing_base_folder_names_it_and_how_to_pass_another(saved, tmp_path):
    base, ckpt, model = saved
    moved_ckpt, moved_base = tmp_path / "ckpt", tmp_path / "moved-base"
    shutil.copytree(ckpt, moved_ckpt)
    meta = json.loads((moved_ckpt / "idruid.json").read_text())
    gone = tmp_path / "gone"
    meta["base"]["path"] = str(gone)
    (moved_ckpt / "idruid.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"base model folder '{gone}' does not exist.*base_model=DIR"):
        load_checkpoint(moved_ckpt)
    shutil.copytree(base, moved_base)
    assert torch.equal(predict(load_checkpoint(moved_ckpt, base_model=moved_base)), predict(model))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no transformer/config.json"):
        load_checkpoint(moved_ckpt, base_model=empty)


def test_base_checkpoint_without_record_is_refused(saved, tmp_path):
    _, ckpt, _ = saved
    shutil.copytree(ckpt, tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "idruid.json").read_text())
    del meta["base"]
    (tmp_path / "old" / "idruid.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="records no config hash"):
        load_checkpoint(tmp_path / "old")
    meta["base"] = {"path": "x"}
    (tmp_path / "old" / "idruid.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="\"base\" entry is malformed"):
        load_checkpoint(tmp_path / "old")


def test_embedded_checkpoint_still_holds_and_loads_its_whole_backbone():
    meta = read_checkpoint_meta(EMBEDDED_CHECKPOINT)
    assert meta["model"]["base_model"] is None and "base" not in meta
    model = load_checkpoint()
    stored = set(load_file(str(EMBEDDED_CHECKPOINT / "model.safetensors")))
    assert stored == set(model.trainable_state_dict())
    assert "transformer.transformer_blocks.0.attn.to_q.weight" in stored
    assert all(p.requires_grad for p in model.trainable_parameters())
    with pytest.raises(CheckpointError, match="holds its whole backbone"):
        load_checkpoint(base_model=EMBEDDED_CHECKPOINT)


def test_weights_the_model_never_reads_are_refused(tmp_path):
    """The 6 never-trained caption-token parameters (``unused_prefixes``) are not saved; a
    checkpoint holding them (as idruid before the shipped model saved them) is refused by name."""
    model = load_checkpoint()
    extra = tmp_path / "extra"
    shutil.copytree(EMBEDDED_CHECKPOINT, extra)
    state = load_file(str(extra / "model.safetensors"))
    unused = {k: v for k, v in model.state_dict().items() if k.startswith(model.unused_prefixes)}
    assert len(unused) == 6 and not set(unused) & set(state)
    save_file({**state, **unused}, str(extra / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"0 missing, e.g. \[\]; 6 unexpected, e.g. \['adapter.box"):
        load_checkpoint(extra)
