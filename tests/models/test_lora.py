"""Optional LoRA on the MM-DiT backbone (peft, ``ModelConfig.lora_rank``) on the ``tiny`` preset's
model: injection keeps predictions and the IDM processors, only LoRA + adapter + IDM train, and
checkpoints round-trip with the LoRA layers rebuilt before loading."""

import dataclasses
import sys

import pytest
import torch
from safetensors.torch import load_file

from idruid.checkpoint import CheckpointError, load_checkpoint, load_trained_weights, save_checkpoint
from idruid.config import ConfigError, ModelConfig, load_config
from idruid.layout import Instance, Layout
from idruid.models.processors import LayoutJointAttnProcessor
from idruid.models.sd3 import LORA_TARGETS, SD3LayoutModel, SD3Network, build_transformer

pytestmark = pytest.mark.usefixtures("one_thread")

RANK, ALPHA = 4, 8.0  # LoRA scale alpha / rank = 2


def tiny(**changes) -> ModelConfig:
    return dataclasses.replace(load_config("tiny").model, **changes)


def build(config: ModelConfig, seed: int = 0) -> SD3LayoutModel:
    torch.manual_seed(seed)
    return SD3LayoutModel(config).eval()


def predict(model: SD3LayoutModel) -> torch.Tensor:
    layouts = [
        Layout("a red circle and a blue square", (Instance("a red circle", (0.1, 0.1, 0.5, 0.5)),)),
        Layout("two shapes", (Instance("a blue square", (0.2, 0.3, 0.9, 0.8)),)),
    ]
    torch.manual_seed(3)
    x, sigma = torch.randn(2, 3, 32, 32), torch.tensor([0.8, 0.3])
    with torch.no_grad():
        return model(x, sigma, model.encode_text(layouts))[0]


def perturb_lora(model: SD3LayoutModel) -> None:
    """Give B non-zero values, as training would, so that LoRA changes the output."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.05 * torch.randn_like(param))


def is_idruid(name: str) -> bool:
    """A weight idruid trains: the adapter's (less its caption-token modules, which get no gradient
    at the tiny preset's caption_max_length=0), the IDM processors' and LoRA's."""
    adapter = name.startswith("adapter.") and not name.startswith(UNUSED)
    return adapter or ".processor." in name or "lora_" in name


UNUSED = ("adapter.caption_proj.", "adapter.box_proj.", "adapter.caption_norm.")


@pytest.fixture(scope="module")
def pair() -> tuple[SD3LayoutModel, SD3LayoutModel]:
    """The same seed without and with LoRA: identical backbone, adapter and IDM weights."""
    return build(tiny()), build(tiny(lora_rank=RANK, lora_alpha=ALPHA))


def test_fresh_lora_leaves_backbone_weights_and_predictions_unchanged(pair):
    plain, lora = pair
    to_q = lora.transformer.transformer_blocks[0].attn.to_q
    assert torch.equal(to_q.base_layer.weight, plain.transformer.transformer_blocks[0].attn.to_q.weight)
    lora_b = [p for n, p in lora.named_parameters() if "lora_B" in n]
    lora_a = [p for n, p in lora.named_parameters() if "lora_A" in n]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)
    assert all(torch.count_nonzero(p) > 0 for p in lora_a)
    torch.testing.assert_close(predict(lora), predict(plain), rtol=0, atol=1e-6)


def test_lora_layer_computes_w_x_plus_scaled_b_a_x(tmp_path):
    model = build(tiny(lora_rank=RANK, lora_alpha=ALPHA))
    perturb_lora(model)
    layer = model.transformer.transformer_blocks[0].attn.add_k_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight  # (r, in), (out, r)
    x = torch.randn(5, a.shape[1])
    by_hand = x @ layer.base_layer.weight.T + layer.base_layer.bias + (ALPHA / RANK) * (x @ a.T @ b.T)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), by_hand, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(predict(model), predict(build(tiny())), atol=1e-4)  # LoRA is in the path


def test_lora_adapts_exactly_the_attention_projections_and_keeps_idm_processors(pair):
    plain, lora = pair
    processors = lora.transformer.attn_processors
    assert len(processors) == lora.network.num_layers == len(lora.transformer.transformer_blocks)
    assert all(isinstance(p, LayoutJointAttnProcessor) for p in processors.values())
    for block in lora.transformer.transformer_blocks:
        assert isinstance(block.attn.processor, LayoutJointAttnProcessor)
        assert type(block.attn.processor.to_q) is torch.nn.Linear  # IDM's own projections: not adapted
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in lora.named_parameters() if ".lora_A." in n}
    expected = {  # every attention projection diffusers built (the last block has no to_add_out)
        f"transformer.transformer_blocks.{i}.attn.{target}"
        for i, block in enumerate(plain.transformer.transformer_blocks)
        for target in LORA_TARGETS
        if isinstance(_submodule(block.attn, target), torch.nn.Linear)
    }
    assert adapted == expected and len(expected) == 8 + 7
    # the processors still run: one attention-map pair per block
    layouts = [Layout("shapes", (Instance("a red circle", (0.1, 0.1, 0.5, 0.5)),))]
    with torch.no_grad():
        _, maps = lora(torch.randn(1, 3, 32, 32), torch.tensor([0.5]), lora.encode_text(layouts), True, True)
    assert len(maps) == lora.network.num_layers


def _submodule(module: torch.nn.Module, path: str) -> torch.nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:  # absent, or None (to_add_out of the last, context-pre-only block)
        return None


def test_only_lora_adapter_and_idm_parameters_train(pair):
    _, lora = pair
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    wanted = {n for n, _ in lora.named_parameters() if is_idruid(n)}
    assert trainable == wanted
    assert any("lora_" in n for n in trainable) and any(".processor." in n for n in trainable)
    assert any(n.startswith("adapter.") for n in trainable)
    assert {id(p) for p in lora.trainable_parameters()} == {
        id(p) for n, p in lora.named_parameters() if n in wanted
    }


def test_one_optimiser_step_moves_lora_but_not_base_weights():
    model = build(tiny(lora_rank=RANK, lora_alpha=ALPHA)).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimiser = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    layouts = [Layout("shapes", (Instance("a red circle", (0.1, 0.1, 0.5, 0.5)),))] * 2
    v_pred, _ = model(torch.randn(2, 3, 32, 32), torch.tensor([0.9, 0.4]), model.encode_text(layouts))
    v_pred.square().mean().backward()
    optimiser.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # B starts at zero, so A gets no gradient on the first step; B does
    assert any("lora_B" in n for n in changed) and not any("lora_A" in n for n in changed)
    assert all(is_idruid(n) for n in changed)
    base = [n for n in before if n.startswith("transformer.") and not is_idruid(n)]
    assert "transformer.transformer_blocks.0.attn.to_q.base_layer.weight" in base
    assert all(model.get_parameter(n).grad is None for n in base)


@pytest.mark.parametrize("rank", [0, RANK])
def test_checkpoint_round_trip_with_and_without_lora(rank, tmp_path):
    model = build(tiny(lora_rank=rank, lora_alpha=ALPHA if rank else None))
    perturb_lora(model)
    save_checkpoint(model, tmp_path / "ckpt")
    stored = set(load_file(str(tmp_path / "ckpt" / "model.safetensors")))
    assert any("lora_" in k for k in stored) == bool(rank)
    loaded = load_checkpoint(tmp_path / "ckpt")  # rebuilds the LoRA layers from the saved config
    assert loaded.config.lora_rank == rank
    assert torch.equal(predict(loaded), predict(model))
    fresh = build(tiny(lora_rank=rank, lora_alpha=ALPHA if rank else None), seed=5)
    assert not torch.equal(predict(fresh), predict(model))
    load_trained_weights(fresh, tmp_path / "ckpt")
    assert torch.equal(predict(fresh), predict(model))


def test_lora_on_a_base_folder_stores_only_idruid_and_lora_weights(tmp_path):
    encoder_dim = 64  # the embedded text encoder's hidden and pooled sizes
    torch.manual_seed(0)
    network = SD3Network(**tiny().network)
    transformer = build_transformer(tiny(), network, encoder_dim, encoder_dim)
    transformer.save_pretrained(tmp_path / "base" / "transformer")
    model = build(tiny(base_model=str(tmp_path / "base"), lora_rank=RANK))
    perturb_lora(model)
    save_checkpoint(model, tmp_path / "ckpt")
    stored = set(load_file(str(tmp_path / "ckpt" / "model.safetensors")))
    assert stored == {k for k in model.state_dict() if is_idruid(k)}
    assert any("lora_B" in k for k in stored) and not any("base_layer" in k for k in stored)
    assert torch.equal(predict(load_checkpoint(tmp_path / "ckpt")), predict(model))


def test_lora_checkpoint_into_a_model_without_lora_is_refused(tmp_path):
    lora = build(tiny(lora_rank=RANK))
    save_checkpoint(lora, tmp_path / "lora")
    with pytest.raises(CheckpointError, match=r"model config differs.*lora_rank: 4 vs 0"):
        load_trained_weights(build(tiny()), tmp_path / "lora")
    save_checkpoint(build(tiny()), tmp_path / "plain")
    with pytest.raises(CheckpointError, match=r"lora_rank: 0 vs 4"):
        load_trained_weights(lora, tmp_path / "plain")


def test_bad_lora_settings_are_refused():
    with pytest.raises(ConfigError, match="'to_qq' matches no module"):
        SD3LayoutModel(tiny(lora_rank=2, lora_targets=["to_q", "to_qq"]))
    with pytest.raises(ConfigError, match="lora_rank must be >= 0"):
        SD3LayoutModel(tiny(lora_rank=-1))
    with pytest.raises(ConfigError, match="lora_alpha must be > 0"):
        SD3LayoutModel(tiny(lora_rank=2, lora_alpha=0))
    only_q = SD3LayoutModel(tiny(lora_rank=2, lora_targets=["to_q"]))
    adapted = {n.split(".lora_A")[0] for n, _ in only_q.named_parameters() if ".lora_A." in n}
    assert adapted == {f"transformer.transformer_blocks.{i}.attn.to_q" for i in range(2)}


def test_missing_peft_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'idruid\[lora\]'"):
        SD3LayoutModel(tiny(lora_rank=2))
