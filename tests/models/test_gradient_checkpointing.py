"""Gradient checkpointing (issue 5): recomputing the backbone blocks in the backward pass gives the
same loss and gradients, L_dis included (its attention maps are made inside the recomputed blocks)."""

import json

import torch

from idruid.config import load_config
from idruid.data.shapes import prompt_only_layouts
from idruid.losses import idc_loss
from idruid.models.sd3 import SD3LayoutModel
from idruid.train import train


def _loss_and_grads(model, layouts, x_t, sigma):
    model.zero_grad(set_to_none=True)
    cond = model.encode_text(layouts)
    v_pred, maps = model(x_t, sigma, cond, record_attention=True)
    loss = (v_pred**2).mean() + idc_loss(maps, cond.boxes, cond.valid)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.trainable_parameters()]


def test_checkpointed_blocks_give_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = SD3LayoutModel(load_config("tiny").model).train()
    layouts = prompt_only_layouts(3, 0)
    x_t = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.3, 0.6, 0.9])
    loss, grads = _loss_and_grads(model, layouts, x_t, sigma)
    model.transformer.enable_gradient_checkpointing()
    assert model.transformer.gradient_checkpointing
    loss_ckpt, grads_ckpt = _loss_and_grads(model, layouts, x_t, sigma)
    assert torch.equal(loss, loss_ckpt)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads, grads_ckpt, strict=True))
    assert any(g.abs().sum() > 0 for g in grads)


def test_training_with_gradient_checkpointing_matches_training_without(tmp_path):
    losses = []
    for flag in ("false", "true"):
        train(
            load_config("tiny", ["steps=2", f"gradient_checkpointing={flag}"]),
            tmp_path / flag,
            progress=False,
        )
        losses.append(
            [json.loads(line)["loss"] for line in (tmp_path / flag / "log.jsonl").read_text().splitlines()]
        )
    assert losses[0] == losses[1]
