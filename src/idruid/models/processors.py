"""The attention processors that carry the layout branch (models/idm.py) in a backbone.

- ``LayoutJointAttnProcessor``: on every joint-attention block of the MM-DiT (paper 4.1); the
  image part of the joint attention's output is the global-prompt-enhanced feature e_{n+1}.
- ``ImageAttnProcessor``: the second, image-only attention (``attn2``) of SD3.5-medium's
  dual-attention blocks, the plain one: its output attended to no prompt token, so it is no
  global-prompt-enhanced e_{n+1} for an IDM to refine.
- ``LayoutCrossAttnProcessor``: on the 8x8 mid-block and 16x16 decoder cross-attention layers of
  the SD1.5 UNet (appendix B); the prompt cross-attention's output is e_{n+1}.
- ``PromptAttnProcessor``: every other UNet attention layer, the plain one, conditioned on the
  global prompt only.

Each runs the backbone's own attention unchanged (``joint_attention``, ``cross_attention``, the
computations of diffusers' ``JointAttnProcessor2_0`` and ``AttnProcessor2_0``), then adds the
branch for the samples whose layout is on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0

from .idm import LayoutBranch


def joint_attention(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None):
    """The backbone's MM-DiT joint attention, returning the pre-projection image features too.

    Same computation as diffusers' ``JointAttnProcessor2_0``; returns (image_out, context_out,
    image_features, image_query) where image_features (B, HW, C) is e_{n+1} before ``to_out`` and
    image_query (B, heads, HW, d) the image tokens' queries (after the backbone's q-norm, if any).
    """
    batch = hidden_states.shape[0]
    heads = attn.heads

    def split(x):  # (B, S, C) -> (B, heads, S, d)
        return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

    query, key, value = (
        split(attn.to_q(hidden_states)),
        split(attn.to_k(hidden_states)),
        split(attn.to_v(hidden_states)),
    )
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    image_query = query
    num_image = hidden_states.shape[1]
    if encoder_hidden_states is not None:
        ctx_q = split(attn.add_q_proj(encoder_hidden_states))
        ctx_k = split(attn.add_k_proj(encoder_hidden_states))
        ctx_v = split(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            ctx_q = attn.norm_added_q(ctx_q)
        if attn.norm_added_k is not None:
            ctx_k = attn.norm_added_k(ctx_k)
        query, key, value = (
            torch.cat(pair, dim=2) for pair in ((query, ctx_q), (key, ctx_k), (value, ctx_v))
        )
    out = F.scaled_dot_product_attention(query, key, value)
    out = out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[-1]).to(query.dtype)
    image_features, context = out[:, :num_image], out[:, num_image:]
    image_out = attn.to_out[1](attn.to_out[0](image_features))
    if encoder_hidden_states is None:
        return image_out, None, image_features, image_query
    if not attn.context_pre_only:
        context = attn.to_add_out(context)
    return image_out, context, image_features, image_query


class LayoutJointAttnProcessor(LayoutBranch):
    """Joint attention + the layout branch (IDM or adapter-only), one per MM-DiT block."""

    # diffusers passes a joint_attention_kwargs entry (``layout``) to a processor only if its __call__
    # names it; one it does not name is dropped with a warning.
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, layout=None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, layout)

    def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, layout=None):
        image_out, context_out, global_features, query = joint_attention(
            attn, hidden_states, encoder_hidden_states
        )
        if layout is not None:
            branch = self.instance_branch(hidden_states, global_features, layout, query)
            image_out = image_out + layout.enabled.to(branch.dtype)[:, None, None] * branch
        if encoder_hidden_states is None:
            return image_out
        return image_out, context_out


def cross_attention(
    attn, hidden_states: torch.Tensor, context: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A UNet attention layer's own attention: (features (B, P, C) before ``to_out``, queries
    (B, heads, P, d)), the same computation as diffusers' ``AttnProcessor2_0`` for the layers of
    SD1.5's transformer blocks (no group or spatial norm, no residual inside the layer, which this
    refuses rather than mis-computes)."""
    if attn.group_norm is not None or attn.spatial_norm is not None or attn.residual_connection:
        raise NotImplementedError(
            "IDM on a UNet attention layer with group/spatial norm or an inner residual"
        )
    if getattr(attn, "norm_q", None) is not None or attn.rescale_output_factor != 1.0:
        raise NotImplementedError("IDM on a UNet attention layer with q/k norms or a rescaled output")
    context = hidden_states if context is None else context
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)

    def split(x):  # (B, S, C) -> (B, heads, S, d)
        return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)

    query, key, value = split(attn.to_q(hidden_states)), split(attn.to_k(context)), split(attn.to_v(context))
    out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
    return out.transpose(1, 2).flatten(-2), query


class LayoutCrossAttnProcessor(LayoutJointAttnProcessor):
    """The prompt cross-attention of a UNet layer + the layout branch (IDM or adapter-only).

    ``downsample`` is the layer's spatial factor against the model input (8 for SD1.5's mid block
    at 64x64 latents): the layer's token grid is the input's divided by it, and each token cell
    covers downsample x downsample input pixels for the IDM's pixel-precision geometry.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        token_dim: int,
        downsample: int,
        use_idm: bool = True,
        idm_hidden: int = 128,
        geometry_rank: int = 32,
        share_query: bool = False,
    ):
        super().__init__(dim, heads, token_dim, use_idm, idm_hidden, downsample, geometry_rank, share_query)
        self.downsample = downsample

    def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, layout=None):
        if attention_mask is not None:
            raise NotImplementedError("LayoutCrossAttnProcessor takes no attention mask (SD1.5 passes none)")
        global_features, query = cross_attention(attn, hidden_states, encoder_hidden_states)  # e_{n+1}
        out = attn.to_out[1](attn.to_out[0](global_features))
        if layout is not None:
            height, width = layout.grid[0] * layout.patch, layout.grid[1] * layout.patch  # model input
            grid = (height // self.downsample, width // self.downsample)
            if grid[0] * grid[1] != hidden_states.shape[1]:
                raise ValueError(
                    f"a layer with downsample {self.downsample} of a {height}x{width} input should see "
                    f"{grid[0]}x{grid[1]} tokens, got {hidden_states.shape[1]}"
                )
            view = layout.at(grid, self.downsample * layout.patch)
            branch = self.instance_branch(hidden_states, global_features, view, query)
            out = out + layout.enabled.to(branch.dtype)[:, None, None] * branch
        return out


class PromptAttnProcessor(AttnProcessor2_0):
    """diffusers' own attention for the UNet layers without IDM; it names ``layout`` so that the
    layout passed to every layer through ``cross_attention_kwargs`` is dropped without a warning."""

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, layout=None
    ):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class ImageAttnProcessor(JointAttnProcessor2_0):
    """diffusers' own attention for SD3.5-medium's image-only ``attn2``; it names ``layout`` so
    that the layout passed to every attention of a block through ``joint_attention_kwargs`` is
    dropped without a warning (diffusers warns on a keyword its processor does not name)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, layout=None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask)
