"""Stage 1's paired batches (Eq. 11-12 without RL): the paired training set of ``config.data``,
each batch's random draws (prompt and layout dropout, noise, training times) and its losses,
L_ldm + lambda_dis * L_dis. The training loop (idruid.train) calls these once per step, and
the RL stage's SFT variant on its rendered prompt-only batches.
"""

from __future__ import annotations

import torch

from .config import TrainConfig
from .data.shapes import ShapesPairedDataset
from .losses import idc_loss
from .models.base import LayoutModel


def collate(items: list[dict]) -> dict:
    return {"image": torch.stack([it["image"] for it in items]), "layouts": [it["layout"] for it in items]}


def paired_dataset(config: TrainConfig):
    """The paired training set of ``config.data``: items {"image": (C, H, W) in [-1, 1], "layout"}."""
    if config.data == "layoutsam":
        from .data.layoutsam_train import LayoutSamPairedDataset

        return LayoutSamPairedDataset(
            config.data_path,
            config.image_root,
            config.model.resolution,
            captions=config.captions,
            skip_missing=config.skip_missing,
        )
    return ShapesPairedDataset(
        size=config.data_size,
        seed=config.data_seed,
        resolution=config.model.resolution,
        min_shapes=config.min_instances,
        max_shapes=config.max_instances,
        geometry=config.geometry,
    )


def paired_draws(
    x0: torch.Tensor, config: TrainConfig, process, rank: int = 0, world: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt and layout dropout (B,), noise like x0 (B, C, H, W) and training times t (B,) of
    the diffusion ``process`` for this process rank.

    Every process draws the whole global batch (world x B rows) from the same seeded stream and
    keeps rows [rank * B, (rank + 1) * B), the rows of the images its data shard holds. So P
    processes at batch B train on exactly the draws of one process at batch P x B, and no rank
    repeats another's noise; on one process this is the plain draw of B rows.
    """
    b = x0.shape[0]
    total, rows = b * world, slice(rank * b, (rank + 1) * b)
    drop_prompt = (torch.rand(total) < config.drop_prompt)[rows]
    drop_layout = (torch.rand(total) < config.drop_layout)[rows]
    noise = torch.randn((total, *x0.shape[1:]), dtype=x0.dtype, device=x0.device)[rows]
    t = process.train_times(total, config.time_sampling, device=x0.device)[rows]
    return drop_prompt, drop_layout, noise, t


def paired_losses(
    model: LayoutModel, network, images: torch.Tensor, layouts: list, config: TrainConfig, accelerator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """L_ldm + lambda_dis * L_dis, L_ldm (Eq. 11; noise prediction for an eps backbone) and L_dis
    (Eq. 4, None without IDC) on a batch of paired images (B, 3, H, W) in [-1, 1].

    model: the layout model (text and image encoding, its process); network: the module to call
    for the differentiable prediction (the accelerate-prepared model), as in ``RLStage.loss``.

    L_dis is a softplus of batch means, so across processes it is taken per process (what each
    rank's gradient sees); L_ldm is a plain mean and matches one process at the global batch.
    """
    process = model.process
    x0 = model.encode_images(images)  # latents: the images themselves in pixel space
    drop_prompt, drop_layout, noise, t = paired_draws(
        x0, config, process, accelerator.process_index, accelerator.num_processes
    )
    cond = model.encode_text(layouts, drop_prompt, drop_layout).to(x0.device)
    x_t = process.add_noise(x0, noise, t)
    use_idc = config.model.use_idm and config.lambda_dis > 0
    with accelerator.autocast():
        prediction, maps = network(x_t, t, cond, record_attention=use_idc)
    l_ldm = process.loss(prediction, x0, noise)
    if not use_idc:
        return l_ldm, l_ldm, None
    l_dis = idc_loss(maps, cond.boxes, cond.valid & cond.enabled.bool()[:, None])
    return l_ldm + config.lambda_dis * l_dis, l_ldm, l_dis
