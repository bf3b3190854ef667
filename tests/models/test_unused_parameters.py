"""Parameters that no output depends on (the adapter's caption-token modules at
caption_max_length=0) are neither optimised nor saved; older checkpoints that hold them still load."""

import pytest
import torch
from safetensors.torch import load_file

from idruid.checkpoint import save_checkpoint
from idruid.config import ModelConfig
from idruid.layout import Instance, Layout
from idruid.losses import add_noise, flow_matching_loss
from idruid.models.sd3 import SD3LayoutModel

TINY = ModelConfig(
    idm_hidden=16, geometry_rank=4, resolution=16, network=dict(num_layers=1, num_heads=2, head_dim=16)
)
CAPTION = ("adapter.caption_proj.", "adapter.box_proj.", "adapter.caption_norm.")


def unused_names(model) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(CAPTION)}


def layouts() -> list[Layout]:
    boxes = ((0.1, 0.1, 0.5, 0.5), (0.5, 0.4, 0.9, 0.9))
    return [
        Layout(
            "shapes", tuple(Instance(f"a {c} circle", b) for c, b in zip(("red", "blue"), boxes, strict=True))
        )
    ] * 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SD3LayoutModel(TINY)


def test_caption_modules_are_not_optimised_nor_saved_without_caption_tokens(model, tmp_path):
    unused = unused_names(model)
    assert len(unused) == 6  # weight and bias of caption_proj, box_proj, caption_norm
    params = {id(p) for p in model.trainable_parameters()}  # what train.py's optimiser gets
    assert not params & {id(p) for n, p in model.named_parameters() if n in unused}
    assert not unused & set(model.trainable_state_dict())
    assert not unused & set(load_file(str(save_checkpoint(model, tmp_path / "ckpt") / "model.safetensors")))


def test_with_caption_tokens_they_are_optimised_and_saved(tmp_path):
    with_tokens = SD3LayoutModel(ModelConfig(**{**TINY.__dict__, "caption_max_length": 4}))
    unused = unused_names(with_tokens)
    params = {id(p) for p in with_tokens.trainable_parameters()}
    assert {id(p) for n, p in with_tokens.named_parameters() if n in unused} <= params
    saved = load_file(str(save_checkpoint(with_tokens, tmp_path / "ckpt") / "model.safetensors"))
    assert unused <= set(saved)


def test_a_training_step_gives_them_no_gradient_and_the_output_does_not_depend_on_them(model):
    cond = model.encode_text(layouts())
    x_0, noise, sigma = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.tensor([0.3, 0.8])
    x_t = add_noise(x_0, noise, sigma)
    for proc in model.transformer.attn_processors.values():  # open the zero-initialised residual
        torch.nn.init.normal_(proc.to_out.weight, std=0.1)
    model.zero_grad()
    v_pred, _ = model(x_t, sigma, cond)
    flow_matching_loss(v_pred, x_0, noise).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(grads[n] is None for n in unused_names(model))
    assert grads["adapter.layout_mlp.0.weight"] is not None  # the rest of the adapter does learn
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in unused_names(model):
                param.add_(torch.randn_like(param))
        again, _ = model(x_t, sigma, cond)
    assert torch.equal(again, v_pred.detach())
    for proc in model.transformer.attn_processors.values():
        torch.nn.init.zeros_(proc.to_out.weight)
