"""idruid.stage1: stage 1's paired loss L = L_ldm + lambda_dis L_dis (Eq. 11-12) recomputed outside
paired_losses from the same seeded draws."""

from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from idruid.config import load_config
from idruid.data.shapes import ShapesPairedDataset
from idruid.losses import idc_loss
from idruid.models import build_model
from idruid.stage1 import collate, paired_draws, paired_losses

ONE_PROCESS = SimpleNamespace(process_index=0, num_processes=1, autocast=nullcontext)


@pytest.fixture(scope="module")
def paired_batch():
    config = load_config("tiny")
    torch.manual_seed(0)
    model = build_model(config.model)
    for param in model.trainable_parameters():  # a trained-looking layout branch, not a zero residual
        if param.ndim > 1:
            torch.nn.init.normal_(param, std=0.05)
    dataset = ShapesPairedDataset(size=3, seed=1, resolution=32, min_shapes=2, max_shapes=3)
    return config, model, collate([dataset[k] for k in range(3)])


@pytest.mark.parametrize("lambda_dis", [0.5, 2.0])
def test_paired_loss_recomputed_outside_the_trainer(paired_batch, lambda_dis):
    """With the same seed, the draws, the noisy input and the model's prediction are redone by hand:
    L_ldm is the mean squared error to the velocity noise - x0, L_dis the IDC loss of the recorded
    maps, and the loss their sum with weight lambda_dis."""
    config, model, batch = paired_batch
    config.lambda_dis = lambda_dis
    torch.manual_seed(5)
    loss, l_ldm, l_dis = paired_losses(model, model, batch["image"], batch["layouts"], config, ONE_PROCESS)

    torch.manual_seed(5)
    x0 = batch["image"]  # the pixel codec: latents are the images
    torch.testing.assert_close(model.encode_images(batch["image"]), x0)
    drop_prompt, drop_layout, noise, t = paired_draws(x0, config, model.process)
    cond = model.encode_text(batch["layouts"], drop_prompt, drop_layout)
    s = t.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    prediction, maps = model(x_t, t, cond, record_attention=True)
    expected_ldm = ((prediction - (noise - x0)) ** 2).mean()
    expected_dis = idc_loss(maps, cond.boxes, cond.valid & cond.enabled.bool()[:, None])
    torch.testing.assert_close(l_ldm, expected_ldm)
    torch.testing.assert_close(l_dis, expected_dis)
    torch.testing.assert_close(loss, expected_ldm + lambda_dis * expected_dis)
    assert loss.requires_grad


def test_without_lambda_dis_the_loss_is_l_ldm_alone(paired_batch):
    config, model, batch = paired_batch
    config.lambda_dis = 0.0
    torch.manual_seed(5)
    loss, l_ldm, l_dis = paired_losses(model, model, batch["image"], batch["layouts"], config, ONE_PROCESS)
    assert l_dis is None and loss is l_ldm
