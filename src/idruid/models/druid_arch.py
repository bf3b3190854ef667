"""The I-DRUID authors' released architecture (``AdapterLayoutSD3Transformer2DModel``, GitHub
FlyingRoastDuck/I_DRUID at 429e72c), rebuilt on diffusers' ``SD3Transformer2DModel`` from the facts
in ``official-druid/README.md``: no code of theirs is copied. Module names are theirs, so their
checkpoint's 1411 tensors load one to one (683 of them are ``SD3Transformer2DModel``'s own).

It is not the paper's Eq. 1-2 (docs/method.md, "the paper, the authors' code, and idruid"):

- layout tokens (``position_net``), computed once: [MLP(caption feature), Fourier(box)] -> MLP,
  one per slot, 10 slots, learnable null features for empty slots (and for every slot of the
  unconditional row);
- per block a layout branch on the norm1 output: ``norm1_bbox`` modulates the tokens with temb,
  ``bbox_fuser_block`` (a diffusers ``Attention`` with ``DruidFuserProcessor``: joint attention
  over [image; layout tokens] + an IP-Adapter cross-attention gated by a squeeze-and-excitation
  "IDM" on the binary box masks), ``bbox_forward`` (Linear); its output is added to the image
  stream after the attention output is multiplied by gate_msa, ungated, when bbox_scale != 0.

``DruidSD3Transformer.forward`` adapts diffusers 0.42's ``SD3Transformer2DModel.forward`` and
``JointTransformerBlock.forward`` (Apache-2.0). Changes: the layout tokens are computed before the
blocks, each block adds the layout term after gate_msa, no dual attention, skip layers, controlnet
residuals or IP-Adapter image embeddings (the authors' model has none of them), and an optional
``capture`` dict that records intermediate tensors for the golden-fixture test.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from diffusers import SD3Transformer2DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero
from torch import nn

FOURIER_FREQS = 8  # frequencies per coordinate: 4 coords x (sin, cos) x 8 = 64 values
FOURIER_TEMPERATURE = 100.0  # f_j = 100 ** (j / 8), no pi (GLIGEN's embedder)
IDM_REDUCTION = 16  # the squeeze-and-excitation's hidden width is inner / 16 (96 at 1536)
LAYOUT_MODULES = ("position_net.", "norm1_bbox.", "bbox_fuser_block.", "bbox_forward.")
# SD3-medium's transformer/config.json (stabilityai/stable-diffusion-3-medium-diffusers): the
# sizes of the authors' released checkpoint (keys.json), and of idruid's sd3-medium preset
SD3_MEDIUM = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    pos_embed_max_size=192,
)


def fourier_embedding(boxes: torch.Tensor, freqs: int = FOURIER_FREQS) -> torch.Tensor:
    """Boxes (..., 4) xyxy in [0, 1] -> (..., 8 * freqs): entry j * 8 + s * 4 + c is sin (s = 0)
    or cos (s = 1) of 100 ** (j / freqs) * coord_c, as their box embedding orders it."""
    bands = FOURIER_TEMPERATURE ** (torch.arange(freqs, dtype=torch.float32, device=boxes.device) / freqs)
    angles = bands.to(boxes.dtype)[:, None] * boxes[..., None, :]  # (..., freqs, 4)
    return torch.stack([angles.sin(), angles.cos()], dim=-2).flatten(-3)  # (..., freqs, 2, 4)


def box_grid_masks(boxes: torch.Tensor, valid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Their binary spatial masks (B, K, height * width), row-major: cell (y, x) of slot k is 1 when
    int(y0 * height) <= y < int(y1 * height) and int(x0 * width) <= x < int(x1 * width) (floor
    indices, end exclusive); slots with valid False are all zero."""
    scaled = boxes.double() * torch.tensor(
        [width, height, width, height], dtype=torch.float64, device=boxes.device
    )
    x0, y0, x1, y1 = scaled.floor().long().unbind(-1)  # boxes are >= 0, so floor is Python's int()
    ys = torch.arange(height, device=boxes.device)
    xs = torch.arange(width, device=boxes.device)
    rows = (ys >= y0[..., None]) & (ys < y1[..., None])  # (B, K, h)
    cols = (xs >= x0[..., None]) & (xs < x1[..., None])  # (B, K, w)
    grid = rows[..., :, None] & cols[..., None, :] & valid.bool()[..., None, None]
    return grid.flatten(-2).float()


class _MLP(nn.Module):
    """Linear - SiLU - Linear with their attribute names (linear_1, linear_2)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim_in, hidden)
        self.linear_2 = nn.Linear(hidden, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class DruidPositionNet(nn.Module):
    """Layout tokens (B, K, inner) from boxes (B, K, 4), caption features (B, K, caption_dim) and
    validity masks (B, K): invalid slots take the learnable null caption and null position."""

    def __init__(self, caption_dim: int, inner: int, freqs: int = FOURIER_FREQS):
        super().__init__()
        position_dim = 8 * freqs
        self.freqs = freqs
        self.text_embedder = _MLP(caption_dim, inner, inner)
        self.linears = _MLP(inner + position_dim, inner // 2, inner)
        self.null_positive_feature = nn.Parameter(torch.zeros(inner))
        self.null_position_feature = nn.Parameter(torch.zeros(position_dim))

    def forward(self, boxes: torch.Tensor, captions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        m = masks.to(captions.dtype)[..., None]  # (B, K, 1)
        position = fourier_embedding(boxes.to(captions.dtype), self.freqs)
        caption = self.text_embedder(captions)
        caption = caption * m + self.null_positive_feature * (1.0 - m)
        position = position * m + self.null_position_feature * (1.0 - m)
        return self.linears(torch.cat([caption, position], dim=-1))


class SqueezeExcitation(nn.Module):
    """Their "IDM": a channel gate sigmoid(fc2(relu(fc1(p)))) from a pooled descriptor p (B, C),
    with 1x1 convolutions as in their checkpoint."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, C) -> gate (B, C) in (0, 1)."""
        hidden = F.relu(self.fc1(pooled[:, :, None, None]))
        return torch.sigmoid(self.fc2(hidden)).flatten(1)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, C) -> (B, heads, L, C / heads)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


class DruidFuserProcessor(nn.Module):
    """The processor of ``bbox_fuser_block``: image tokens (B, N, C) and layout tokens (B, K, C)
    -> fused (B, N, C) = to_out(J + ip_adapter(A')).

    J: joint attention of the image queries over [image; layout tokens] (image rows kept);
    A: the image queries over the ip keys and values of the layout tokens; A' = A * g * sum_k M_k
    / K, with g the IDM gate of the mean of A * M over all K x N (slot, token) positions (A' = A
    without masks)."""

    def __init__(self, dim: int, idm_hidden: int):
        super().__init__()
        self.add_k_proj_ip = nn.Linear(dim, dim)
        self.add_v_proj_ip = nn.Linear(dim, dim)
        self.ip_adapter = nn.Linear(dim, dim)
        self.IDM = SqueezeExcitation(dim, idm_hidden)  # their attribute name
        for module in (self.add_k_proj_ip, self.add_v_proj_ip, self.ip_adapter, self.IDM.fc1, self.IDM.fc2):
            nn.init.zeros_(module.weight)  # zero-initialised as theirs: a fresh gate is 0.5
            nn.init.zeros_(module.bias)

    def forward(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        spatial_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        heads, num = attn.heads, hidden_states.shape[1]
        query = _heads(attn.to_q(hidden_states), heads)
        keys = torch.cat([attn.to_k(hidden_states), attn.add_k_proj(encoder_hidden_states)], dim=1)
        values = torch.cat([attn.to_v(hidden_states), attn.add_v_proj(encoder_hidden_states)], dim=1)
        layout_query = _heads(attn.add_q_proj(encoder_hidden_states), heads)
        joint = F.scaled_dot_product_attention(
            torch.cat([query, layout_query], dim=2), _heads(keys, heads), _heads(values, heads)
        )[:, :, :num]  # the layout tokens' own outputs are dropped (their to_add_out is never used)
        joint = joint.transpose(1, 2).flatten(2)  # (B, N, C)
        ip = (
            F.scaled_dot_product_attention(
                query,
                _heads(self.add_k_proj_ip(encoder_hidden_states), heads),
                _heads(self.add_v_proj_ip(encoder_hidden_states), heads),
            )
            .transpose(1, 2)
            .flatten(2)
        )  # (B, N, C)
        if spatial_mask is not None:
            ip = self.disentangle(ip, spatial_mask)
        return attn.to_out[1](attn.to_out[0](joint + self.ip_adapter(ip)))

    def disentangle(self, ip: torch.Tensor, spatial_mask: torch.Tensor) -> torch.Tensor:
        """A (B, N, C) and masks M (B, K, N) -> mean over the K slots of g * (A * M_k)."""
        slots = spatial_mask.shape[1]
        coverage = spatial_mask.to(ip.dtype).sum(1)  # (B, N): overlapping boxes count twice
        pooled = (coverage[:, None, :] @ ip).squeeze(1) / (slots * ip.shape[1])  # (B, C)
        gate = self.IDM(pooled)
        return ip * gate[:, None, :] * (coverage / slots)[..., None]


def add_layout_branch(block: nn.Module, dim: int, heads: int, head_dim: int, last: bool) -> None:
    """Give one ``JointTransformerBlock`` their layout modules: norm1_bbox, bbox_fuser_block
    (with its processor) and bbox_forward."""
    if last:
        block.norm1_bbox = AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=1e-6, bias=True)
    else:
        block.norm1_bbox = AdaLayerNormZero(dim)
    block.bbox_fuser_block = Attention(
        query_dim=dim,
        cross_attention_dim=None,
        added_kv_proj_dim=dim,
        dim_head=head_dim,
        heads=heads,
        out_dim=dim,
        context_pre_only=last,
        bias=True,
        processor=DruidFuserProcessor(dim, dim // IDM_REDUCTION),
    )
    block.bbox_forward = nn.Linear(dim, dim)


def layout_term(
    block: nn.Module,
    norm_hidden: torch.Tensor,
    layout_tokens: torch.Tensor,
    temb: torch.Tensor,
    spatial_mask: torch.Tensor | None,
) -> torch.Tensor:
    """bbox_forward(fuser(norm1 output (B, N, C), tokens modulated by norm1_bbox)) (B, N, C)."""
    if isinstance(block.norm1_bbox, AdaLayerNormZero):
        norm_tokens = block.norm1_bbox(layout_tokens, emb=temb)[0]  # only shift_msa, scale_msa used
    else:
        norm_tokens = block.norm1_bbox(layout_tokens, temb)
    fuser = block.bbox_fuser_block  # its processor is called directly: it takes the spatial mask
    fused = fuser.processor(fuser, norm_hidden, norm_tokens, spatial_mask)
    return block.bbox_forward(fused)


def block_forward(
    block: nn.Module,
    hidden: torch.Tensor,
    context: torch.Tensor,
    temb: torch.Tensor,
    layout_tokens: torch.Tensor | None,
    spatial_mask: torch.Tensor | None,
    bbox_scale: float,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """One joint block (diffusers' JointTransformerBlock.forward, single attention) with the
    layout term added after gate_msa. Returns (context, hidden, layout term or None)."""
    norm_hidden, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(hidden, emb=temb)
    if block.context_pre_only:
        norm_context = block.norm1_context(context, temb)
    else:
        norm_context, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context(
            context, emb=temb
        )
    attn_output, context_attn_output = block.attn(
        hidden_states=norm_hidden, encoder_hidden_states=norm_context
    )
    hidden = hidden + gate_msa.unsqueeze(1) * attn_output
    added = None
    if bbox_scale != 0.0:
        added = bbox_scale * layout_term(block, norm_hidden, layout_tokens, temb, spatial_mask)
        hidden = hidden + added
    norm_hidden = block.norm2(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    hidden = hidden + gate_mlp.unsqueeze(1) * block.ff(norm_hidden)
    if block.context_pre_only:
        return None, hidden, added
    context = context + c_gate_msa.unsqueeze(1) * context_attn_output
    norm_context = block.norm2_context(context) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
    context = context + c_gate_mlp.unsqueeze(1) * block.ff_context(norm_context)
    return context, hidden, added


class DruidSD3Transformer(SD3Transformer2DModel):
    """SD3's MM-DiT plus the authors' layout branch (``position_net`` and, per block,
    ``norm1_bbox``, ``bbox_fuser_block``, ``bbox_forward``). ``max_boxes`` slots per image."""

    def __init__(self, max_boxes: int = 10, **sd3_config):
        super().__init__(**sd3_config)
        cfg = self.config
        if cfg.dual_attention_layers or cfg.qk_norm is not None:
            raise ValueError("the authors' architecture is SD3-medium's: no dual attention, no qk-norm")
        self.max_boxes = max_boxes
        inner = cfg.num_attention_heads * cfg.attention_head_dim
        self.position_net = DruidPositionNet(cfg.pooled_projection_dim, inner)
        for i, block in enumerate(self.transformer_blocks):
            add_layout_branch(
                block, inner, cfg.num_attention_heads, cfg.attention_head_dim, i == cfg.num_layers - 1
            )

    def layout_tokens(self, boxes: torch.Tensor, captions: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(B, K, inner) layout tokens, computed once and fed unchanged to every block."""
        if boxes.shape[1] != self.max_boxes:
            raise ValueError(f"layout boxes have {boxes.shape[1]} slots, the model takes {self.max_boxes}")
        return self.position_net(boxes, captions, masks)

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        layout: dict[str, torch.Tensor] | None = None,
        spatial_mask: torch.Tensor | None = None,
        bbox_scale: float = 1.0,
        capture: dict | None = None,
    ) -> torch.Tensor:
        """Velocity (B, C, H, W) for latents (B, C, H, W) at ``timestep`` (sigma * 1000).

        layout: {"boxes" (B, K, 4), "positive_embeddings" (B, K, pooled dim), "masks" (B, K)};
        spatial_mask (B, K, h, w) on the token grid, or None (IDM skipped); bbox_scale 0 skips the
        layout branch (then ``layout`` may be None). ``capture``: a dict that receives temb, the
        layout tokens and per block i "block{i}.layout_add", "block{i}.hidden_out", "block{i}.context_out".
        """
        height, width = hidden_states.shape[-2:]
        patch = self.config.patch_size
        hidden = self.pos_embed(hidden_states).contiguous()
        temb = self.time_text_embed(timestep, pooled_projections)
        context = self.context_embedder(encoder_hidden_states)
        tokens = None
        if bbox_scale != 0.0:
            if layout is None:
                raise ValueError("the layout branch is on (bbox_scale != 0) but no layout was given")
            tokens = self.layout_tokens(layout["boxes"], layout["positive_embeddings"], layout["masks"])
        masks = None if spatial_mask is None else spatial_mask.flatten(2).to(hidden.dtype)  # (B, K, N)
        if capture is not None:
            capture.update(temb=temb, position_net_out=tokens)
        for i, block in enumerate(self.transformer_blocks):
            step = functools.partial(block_forward, block)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                context, hidden, added = self._gradient_checkpointing_func(
                    step, hidden, context, temb, tokens, masks, bbox_scale
                )
            else:
                context, hidden, added = step(hidden, context, temb, tokens, masks, bbox_scale)
            if capture is not None:
                capture.update({f"block{i}.layout_add": added, f"block{i}.hidden_out": hidden})
                capture[f"block{i}.context_out"] = context
        hidden = self.proj_out(self.norm_out(hidden, temb))
        h, w = height // patch, width // patch
        hidden = hidden.reshape(hidden.shape[0], h, w, patch, patch, self.out_channels)
        return torch.einsum("nhwpqc->nchpwq", hidden).reshape(
            hidden.shape[0], self.out_channels, h * patch, w * patch
        )


def is_layout_key(name: str) -> bool:
    """Whether a state-dict key (of the transformer) belongs to the layout branch."""
    return name.startswith("position_net.") or any(f".{m}" in name for m in LAYOUT_MODULES[1:])


__all__ = [
    "DruidSD3Transformer",
    "DruidFuserProcessor",
    "DruidPositionNet",
    "box_grid_masks",
    "fourier_embedding",
    "is_layout_key",
]
