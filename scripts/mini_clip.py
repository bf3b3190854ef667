"""Mini CLIP: contrastive pretraining of the tiny text encoder on crops of single shapes (the asset
builder scripts/pretrain_text_encoder.py runs it; it is not part of the package).

Real layout models read captions through CLIP, pretrained on web text, which is why they
read a caption style they were never fine-tuned on (COCO-MIG's short captions after training
on LayoutSAM's detailed ones, paper 4.1) moderately well. A randomly initialised text
encoder has never seen language, so short and detailed captions of one shape land far
apart. This module mirrors CLIP's pretraining in the shapes world: the tiny CLIPTextModel
and a small CNN image tower are trained with CLIP's symmetric InfoNCE loss (Radford et
al., 2021, learnable temperature) on 16x16 crops of one-shape renders paired with captions
of both styles and with bare ones ("a red shape", "a circle", "a striped shape"), so that
colour, shape and texture words are grounded whatever the wording.

Captions in a batch repeat attributes (63 colour x shape x texture combinations, bare
captions match many crops), so the targets are all compatible pairs, not only the
diagonal (multi-positive InfoNCE); with unique pairs this is CLIP's loss exactly.

Crops are 16x16 windows of the 32x32 render centred on the box, without resampling: the
textures are 1-pixel stripes and dots that any resize would alias away (shapes are at most
14 pixels wide, so the window holds the whole shape).

The text encoder is contrasted through its pooled output (EOS state) with no projection,
so the space it aligns is the one the layout model reads.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from idruid.data import shapes
from idruid.models.text_encoder import EMBEDDED_TOKENIZER, FrozenTextEncoder, load_tokenizer

CROP_SIZE = 16
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
# Caption styles drawn for each crop during pretraining, with their probabilities.
CAPTION_MIX: dict[str, float] = {"detailed": 0.4, "short": 0.3, "color": 0.1, "shape": 0.1, "texture": 0.1}


class Attrs(NamedTuple):
    """What a crop shows or a caption names; None: the caption does not say."""

    color: str | None
    shape: str | None
    texture: str | None


# ----------------------------------------------------------------------------- models


def tiny_text_config(tokenizer: CLIPTokenizer, num_layers: int = 3) -> CLIPTextConfig:
    """The embedded encoder's config: 64 wide, 4 heads, 40 positions, the tokenizer's vocabulary."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        max_position_embeddings=40,
        projection_dim=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_text_model(tokenizer: CLIPTokenizer, seed: int = 0, num_layers: int = 3) -> CLIPTextModel:
    """A randomly initialised tiny CLIPTextModel (deterministic in ``seed``)."""
    torch.manual_seed(seed)
    return CLIPTextModel(tiny_text_config(tokenizer, num_layers)).eval()


def save_text_encoder(
    model: CLIPTextModel, out_dir: str | Path, tokenizer_dir: Path = EMBEDDED_TOKENIZER
) -> Path:
    """config.json + model.safetensors, plus a copy of the tokenizer files (flat layout)."""
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, out_dir / name)
    return out_dir


def build_random_text_encoder(out_dir: str | Path, seed: int = 0, num_layers: int = 3) -> Path:
    """Write an untrained tiny text encoder (the ablation "random vs pretrained")."""
    tokenizer = load_tokenizer()
    return save_text_encoder(build_text_model(tokenizer, seed, num_layers), out_dir)


class ImageTower(nn.Module):
    """Small CNN: (B, 3, 16, 16) crops in [-1, 1] -> (B, dim) embeddings."""

    def __init__(self, dim: int = 64, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),  # 8x8
            nn.GELU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),  # 4x4
            nn.GELU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# ----------------------------------------------------------------------------- loss


def clip_loss(logits: Tensor, positives: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE on logits (B_img, B_txt) = scale * cos(image_i, text_j).

    positives (B_img, B_txt) bool marks the matching pairs (default: the diagonal); each
    row's (column's) target spreads evenly over its positives. With the diagonal this is
    CLIP's loss: (CE(logits, arange) + CE(logits.T, arange)) / 2.
    """
    if positives is None:
        positives = torch.eye(*logits.shape, dtype=torch.bool, device=logits.device)
    target = positives.float()
    image_to_text = -(target / target.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    text_to_image = -(target / target.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def compatible(image_attrs: Sequence[Attrs], caption_attrs: Sequence[Attrs]) -> Tensor:
    """(B_img, B_txt) bool: caption j names nothing that image i does not show."""
    image = torch.tensor([_codes(a) for a in image_attrs])  # (B_img, 3)
    caption = torch.tensor([_codes(a) for a in caption_attrs])  # (B_txt, 3)
    return ((caption[None] == -1) | (caption[None] == image[:, None])).all(-1)


def _codes(attrs: Attrs) -> tuple[int, int, int]:
    """Attribute indices, -1 for None."""
    tables = (tuple(shapes.COLORS), shapes.SHAPES, shapes.TEXTURES)
    return tuple(-1 if v is None else table.index(v) for v, table in zip(attrs, tables, strict=True))


# ----------------------------------------------------------------------------- data


def crop_window(image: np.ndarray, box: Sequence[float], size: int = CROP_SIZE) -> np.ndarray:
    """A size x size window of image (H, W, 3) centred on the normalised box, kept inside."""
    height, width = image.shape[:2]
    cx, cy = (box[0] + box[2]) / 2 * width, (box[1] + box[3]) / 2 * height
    x0 = min(max(math.floor(cx - size / 2), 0), width - size)
    y0 = min(max(math.floor(cy - size / 2), 0), height - size)
    return image[y0 : y0 + size, x0 : x0 + size]


def crop_bank(rng: np.random.Generator, n: int) -> tuple[Tensor, list[Attrs]]:
    """n one-shape scenes of the shapes world, as crops (n, 3, 16, 16) in [-1, 1] and attributes."""
    crops, attrs = [], []
    for _ in range(n):
        spec = shapes.sample_scene(rng, 1).shapes[0]
        image = shapes.render(shapes.Scene((spec,)))
        crops.append(shapes.image_to_tensor(np.ascontiguousarray(crop_window(image, spec.box))))
        attrs.append(Attrs(spec.color, spec.shape, spec.texture))
    return torch.stack(crops), attrs


def _spec(attrs: Attrs) -> shapes.ShapeSpec:
    return shapes.ShapeSpec(attrs.color, attrs.shape, attrs.texture, (0.0, 0.0, 1.0, 1.0))


def sample_caption(attrs: Attrs, style: str, rng: np.random.Generator) -> tuple[str, Attrs]:
    """A caption of ``style`` for a crop showing ``attrs``, and the attributes it names."""
    if style == "detailed":
        return shapes.detailed_caption(_spec(attrs), rng), attrs
    if style == "short":
        return shapes.short_caption(_spec(attrs)), Attrs(attrs.color, attrs.shape, None)
    if style == "color":
        return f"a {attrs.color} shape", Attrs(attrs.color, None, None)
    if style == "shape":
        return f"a {attrs.shape}", Attrs(None, attrs.shape, None)
    if style == "texture":
        adjective = shapes.TEXTURE_ADJECTIVES[attrs.texture]
        return f"a {adjective[int(rng.integers(len(adjective)))]} shape", Attrs(None, None, attrs.texture)
    raise ValueError(f"unknown caption style {style!r} (known: {', '.join(CAPTION_MIX)})")


def all_attrs() -> list[Attrs]:
    """The 63 colour x shape x texture combinations."""
    return [Attrs(c, s, t) for c in shapes.COLORS for s in shapes.SHAPES for t in shapes.TEXTURES]


# ----------------------------------------------------------------------------- training


def pooled_text(model: CLIPTextModel, tokenizer: CLIPTokenizer, texts: Sequence[str]) -> Tensor:
    """(B, D) pooled states (EOS token). Padded to a multiple of 8 tokens, which keeps the
    shapes few (fast on CPU) and is exact: CLIP's causal attention keeps EOS off the padding."""
    tokens = tokenizer(list(texts), padding=True, pad_to_multiple_of=8, truncation=True, return_tensors="pt")
    return model(input_ids=tokens["input_ids"]).pooler_output


def fit(
    image_tower: ImageTower,
    embed_texts: Callable[[list[str]], Tensor],
    params: list[nn.Parameter],
    bank: tuple[Tensor, list[Attrs]],
    rng: np.random.Generator,
    steps: int,
    batch_size: int,
    lr: float,
    mix: dict[str, float],
    desc: str,
    progress: bool = True,
) -> list[float]:
    """Train ``params`` (the image tower's, maybe the text model's) with clip_loss; the losses."""
    crops, attrs = bank
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    optimizer = torch.optim.Adam([*image_tower.parameters(), *params, logit_scale], lr=lr)
    styles, probs = list(mix), np.array(list(mix.values())) / sum(mix.values())
    losses = []
    for _ in tqdm(range(steps), desc=desc, disable=not progress, mininterval=2):
        # SAMPLE: crops and one caption each
        index = rng.integers(0, len(attrs), batch_size)
        image_attrs = [attrs[i] for i in index]
        drawn = [
            sample_caption(a, styles[k], rng)
            for a, k in zip(image_attrs, rng.choice(len(styles), batch_size, p=probs), strict=True)
        ]
        captions, caption_attrs = zip(*drawn, strict=True)
        # LOSS
        image_emb = F.normalize(image_tower(crops[torch.from_numpy(index)]), dim=-1)  # (B, D)
        text_emb = F.normalize(embed_texts(list(captions)), dim=-1)  # (B, D)
        logits = logit_scale.clamp(max=math.log(100)).exp() * image_emb @ text_emb.T  # (B, B)
        loss = clip_loss(logits, compatible(image_attrs, caption_attrs))
        # UPDATE
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# ----------------------------------------------------------------------------- evaluation


def retrieval_accuracy(
    image_emb: Tensor, image_attrs: Sequence[Attrs], text_emb: Tensor, text_attrs: Sequence[Attrs]
) -> float:
    """Share of images whose most similar caption is compatible with them."""
    best = (F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T).argmax(1)
    ok = compatible(image_attrs, [text_attrs[j] for j in best.tolist()]).diagonal()
    return ok.float().mean().item()


def caption_sets(
    rng: np.random.Generator, wordings: int
) -> tuple[list[list[str]], list[Attrs], list[str], list[Attrs]]:
    """``wordings`` sets of 63 detailed captions (one per combination) and the 21 short captions."""
    combos = all_attrs()
    detailed = [[sample_caption(a, "detailed", rng)[0] for a in combos] for _ in range(wordings)]
    short_attrs = [Attrs(c, s, None) for c in shapes.COLORS for s in shapes.SHAPES]
    short = [sample_caption(Attrs(a.color, a.shape, "solid"), "short", rng)[0] for a in short_attrs]
    return detailed, combos, short, short_attrs


@torch.no_grad()
def text_similarity(
    encoder: FrozenTextEncoder, rng: np.random.Generator, wordings: int = 5
) -> dict[str, float]:
    """Pooled-space cosine between short and detailed captions of the same colour and shape vs
    different ones, and how often a detailed caption's nearest short caption is its own."""
    detailed, combos, short, short_attrs = caption_sets(rng, wordings)
    short_emb = F.normalize(encoder.encode(short).pooled, dim=-1)  # (21, D)
    same, diff, hits = [], [], []
    for texts in detailed:
        cos = F.normalize(encoder.encode(texts).pooled, dim=-1) @ short_emb.T  # (63, 21)
        match = torch.tensor(
            [[(a.color, a.shape) == (s.color, s.shape) for s in short_attrs] for a in combos]
        )
        same.append(cos[match].mean().item())
        diff.append(cos[~match].mean().item())
        hits.append(match[torch.arange(len(combos)), cos.argmax(1)].float().mean().item())
    return {
        "cos_same": float(np.mean(same)),
        "cos_diff": float(np.mean(diff)),
        "cos_gap": float(np.mean(same) - np.mean(diff)),
        "detailed_to_short_acc": float(np.mean(hits)),
    }


@torch.no_grad()
def zero_shot_retrieval(
    image_tower: ImageTower,
    encoder: FrozenTextEncoder,
    eval_bank: tuple[Tensor, list[Attrs]],
    rng: np.random.Generator,
    wordings: int = 5,
) -> dict[str, float]:
    """Crop -> caption top-1 accuracy among the 63 detailed captions (mean over wordings) and
    among the 21 short ones."""
    crops, attrs = eval_bank
    image_emb = image_tower(crops)
    detailed, combos, short, short_attrs = caption_sets(rng, wordings)
    detailed_acc = [retrieval_accuracy(image_emb, attrs, encoder.encode(t).pooled, combos) for t in detailed]
    short_acc = retrieval_accuracy(image_emb, attrs, encoder.encode(short).pooled, short_attrs)
    return {"retrieval_detailed": float(np.mean(detailed_acc)), "retrieval_short": short_acc}


def probe(
    encoder: FrozenTextEncoder,
    bank: tuple[Tensor, list[Attrs]],
    eval_bank: tuple[Tensor, list[Attrs]],
    seed: int,
    steps: int,
    batch_size: int,
    lr: float,
    progress: bool = True,
) -> dict[str, float]:
    """Fit a fresh image tower to the frozen encoder on detailed captions only (as stage 1
    trains the layout model), then retrieve with both styles: the caption-style gap."""
    torch.manual_seed(seed)
    tower = ImageTower(encoder.pooled_size)
    embed = lambda texts: encoder.encode(texts).pooled  # noqa: E731
    rng = np.random.default_rng(seed)
    fit(tower, embed, [], bank, rng, steps, batch_size, lr, {"detailed": 1.0}, "probe", progress)
    tower.eval()
    return zero_shot_retrieval(tower, encoder, eval_bank, np.random.default_rng(seed + 1))


def pretrain_text_encoder(
    out_dir: str | Path | None,
    steps: int = 2500,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 1e-3,
    num_layers: int = 3,
    bank_size: int = 8192,
    eval_size: int = 2048,
    probe_steps: int = 500,
    progress: bool = True,
) -> dict[str, float]:
    """Contrastively pretrain the tiny text encoder; write it to ``out_dir`` (flat layout, with
    the tokenizer files and pretraining.json) unless None; return the metrics, pretrained vs
    random (the same model before training)."""
    torch.set_num_threads(2)
    start = time.perf_counter()
    # LOAD
    tokenizer = load_tokenizer()
    text_model = build_text_model(tokenizer, seed, num_layers)
    random_model = copy.deepcopy(text_model)
    rng = np.random.default_rng([seed, 0x636C6970])
    bank = crop_bank(rng, bank_size)
    eval_bank = crop_bank(np.random.default_rng([seed, 0x6576616C]), eval_size)
    torch.manual_seed(seed)
    tower = ImageTower(text_model.config.hidden_size)
    # TRAIN
    text_model.train()
    embed = lambda texts: pooled_text(text_model, tokenizer, texts)  # noqa: E731
    params = list(text_model.parameters())
    losses = fit(tower, embed, params, bank, rng, steps, batch_size, lr, CAPTION_MIX, "mini-clip", progress)
    text_model.eval()
    tower.eval()
    train_seconds = time.perf_counter() - start
    # EVALUATE
    metrics: dict[str, float] = {
        "steps": steps,
        "train_seconds": train_seconds,
        "loss_first": float(np.mean(losses[:20])),
        "loss_last": float(np.mean(losses[-20:])),
    }
    pretrained = FrozenTextEncoder(text_model, tokenizer)
    random = FrozenTextEncoder(random_model, tokenizer)
    joint = zero_shot_retrieval(tower, pretrained, eval_bank, np.random.default_rng(seed + 1))
    metrics.update({f"pretrained/joint_{k}": v for k, v in joint.items()})
    for name, encoder in (("pretrained", pretrained), ("random", random)):
        sims = text_similarity(encoder, np.random.default_rng(seed + 2))
        metrics.update({f"{name}/{k}": v for k, v in sims.items()})
        if probe_steps > 0:
            probed = probe(encoder, bank, eval_bank, seed, probe_steps, batch_size, lr, progress)
            metrics.update({f"{name}/probe_{k}": v for k, v in probed.items()})
    metrics["total_seconds"] = time.perf_counter() - start
    # SAVE
    if out_dir is not None:
        save_text_encoder(text_model, out_dir)
        settings = {
            "steps": steps,
            "seed": seed,
            "batch_size": batch_size,
            "lr": lr,
            "num_layers": num_layers,
            "bank_size": bank_size,
            "probe_steps": probe_steps,
            "caption_mix": CAPTION_MIX,
        }
        (Path(out_dir) / "pretraining.json").write_text(
            json.dumps({"settings": settings, "metrics": metrics}, indent=2)
        )
    return metrics
