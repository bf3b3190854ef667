"""Instance disentanglement module (IDM, paper Eq. 1-2): the layout branch of an attention layer.

``LayoutBranch`` holds the branch's weights and math; the attention processors that carry it
(models/processors.py) are installed on every joint-attention block of the MM-DiT (paper 4.1)
and on the 8x8 mid-block and 16x16 decoder cross-attention layers of the SD1.5 UNet (appendix
B). The processor first runs the backbone's own attention unchanged, then this branch:

1. enhanced features E (Eq. 1 inputs): e_i = cross-attention of the image queries to instance
   i's tokens (all instances at once), and e_{n+1} = the global-prompt-enhanced feature, i.e.
   the image part of the joint attention output (the prompt cross-attention's in a UNet);
2. masks M: 1 inside box i, and all ones for the global feature;
3. alpha = IDM(E, M) in (0, 1)^C per feature (channel-wise weights), from masked descriptors of
   each feature that interact across instances through one self-attention layer;
4. R+ = alpha * E and R- = (1 - alpha) * E (Eq. 2); R+_i (and R-_i when the constraint is on)
   attend again to instance i's tokens, giving the attention maps of Eq. 3-4;
5. the refined features are composed with the soft masks (the share of each token cell inside
   each box), sum_i m_i CA(R+_i) + R+_{n+1}, divided by sum_i m_i + 1, plus a geometry term
   (where each pixel of a cell sits in each box, gated by the instance's layout token: the mask
   branch at pixel precision, docs/method.md point 11), and added through a zero-initialised
   projection, so an untrained adapter leaves the backbone's behaviour intact.

Which path runs: with the default tokens [null, layout] per instance (``caption_max_length=0``,
every preset and the shipped model) ``LayoutBranch._two_token_idm`` computes steps 1-5 in closed
form; with caption word tokens the general path of ``instance_branch``; with ``use_idm=False``
(the adapter-only baseline, ablation row 1) ``_adapter_only``, one plain cross-attention from the
image to the tokens of all instances, with no masks and no weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..boxes import patch_geometry


@dataclass
class LayoutCondition:
    """Everything the processors need about the layouts of a batch."""

    tokens: torch.Tensor  # (B, N, L, D) instance tokens from the layout adapter
    token_mask: torch.Tensor  # (B, N, L) bool
    boxes: torch.Tensor  # (B, N, 4) normalised xyxy, zeros for padding
    valid: torch.Tensor  # (B, N) bool
    enabled: torch.Tensor  # (B,) float, 0 turns the layout branch off for that sample
    grid: tuple[int, int]  # (h, w) of the image token grid
    patch: int = 1  # pixels per token side (the backbone's patch size)
    record_attention: bool = False  # store R+/R- attention maps for L_dis
    # per IDM layer: (attn_pos, attn_neg, grid), maps (B, N, heads, h * w) on that layer's grid
    attention_maps: list = field(default_factory=list)
    _geometry: torch.Tensor | None = None
    _bias: torch.Tensor | None = None
    _views: dict = field(default_factory=dict)

    def at(self, grid: tuple[int, int], patch: int) -> LayoutCondition:
        """The same layouts seen by a layer with another token grid (a UNet's 8x8 mid block and
        16x16 decoder), sharing the token bias and the list of recorded attention maps; each
        grid's geometry is computed once per forward pass."""
        if (grid, patch) == (self.grid, self.patch):
            return self
        if (grid, patch) not in self._views:
            self._views[grid, patch] = LayoutCondition(
                tokens=self.tokens,
                token_mask=self.token_mask,
                boxes=self.boxes,
                valid=self.valid,
                enabled=self.enabled,
                grid=grid,
                patch=patch,
                record_attention=self.record_attention,
                attention_maps=self.attention_maps,
                _bias=self._bias,
            )
        return self._views[grid, patch]

    @property
    def key_bias(self) -> torch.Tensor:
        """(B, N, 1, 1, L) additive attention bias: 0 for usable tokens, a large negative for padding."""
        if self._bias is None:
            blocked = torch.finfo(self.tokens.dtype).min / 2
            bias = torch.zeros(self.token_mask.shape, dtype=self.tokens.dtype, device=self.tokens.device)
            self._bias = bias.masked_fill(~self.token_mask, blocked)[:, :, None, None, :]
        return self._bias

    @property
    def geometry(self) -> torch.Tensor:
        """(B, N, HW, patch * patch, 6): per pixel of each token cell, [inside, u, v, u^2, v^2, uv]."""
        if self._geometry is None:
            h, w = self.grid
            geometry = patch_geometry(self.boxes, h * self.patch, w * self.patch, self.patch)
            self._geometry = geometry * self.valid[..., None, None, None].to(geometry.dtype)
        return self._geometry

    @property
    def coverage(self) -> torch.Tensor:
        """(B, N, HW) share of each token cell inside each box: the soft masks M of the IDM."""
        return self.geometry[..., 0].mean(-1)


def _masked_mean(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Head-split features (B, K, h, P, d) averaged over masks (B, K, P) -> (B, K, C), C = h * d."""
    denom = masks.sum(-1, keepdim=True).clamp(min=1.0)
    pooled = masks[:, :, None, None, :] @ features  # (B, K, h, 1, d): a batched mat-vec, no copies
    return pooled.flatten(2) / denom


class InstanceDisentanglementModule(nn.Module):
    """alpha = IDM(E, M) (Eq. 1): channel-wise weights for the n + 1 enhanced features."""

    def __init__(self, dim: int, hidden: int = 128, heads: int = 4):
        super().__init__()
        self.describe = nn.Sequential(nn.Linear(3 * dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.interact = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.to_alpha = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))

    def forward(
        self, enhanced: torch.Tensor, global_features: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """alpha for E = [e_1..e_n, e_{n+1}] with M = [m_1..m_n, ones].

        enhanced (B, N, h, P, d): the instance features split into heads; global_features
        (B, P, C): e_{n+1}; masks (B, N, P); valid (B, N) bool. Returns alpha (B, N+1, C).
        """
        inside, outside = _masked_mean(enhanced, masks), _masked_mean(enhanced, 1.0 - masks)
        return self.weights(inside, outside, global_features, masks, valid)

    def weights(
        self,
        inside: torch.Tensor,
        outside: torch.Tensor,
        global_features: torch.Tensor,
        masks: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        """alpha from the masked means of the instance features: inside (B, N, C) the mean of e_i
        over m_i, outside (B, N, C) over 1 - m_i. The all-ones mask of e_{n+1} is applied
        analytically (its inside mean is its plain mean, its outside is empty), so the n + 1
        features never need stacking into one tensor."""
        denom = masks.sum(-1, keepdim=True).clamp(min=1.0)
        global_mean = global_features.mean(dim=1, keepdim=True)  # (B, 1, C)
        inside = torch.cat([inside, global_mean], dim=1)  # feature k inside its region
        outside = torch.cat([outside, torch.zeros_like(global_mean)], dim=1)
        # e_{n+1} inside region k
        global_inside = torch.cat([(masks @ global_features) / denom, global_mean], dim=1)
        desc = self.describe(torch.cat([inside, outside, global_inside], dim=-1))
        all_valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
        mixed, _ = self.interact(desc, desc, desc, key_padding_mask=~all_valid, need_weights=False)
        return torch.sigmoid(self.to_alpha(desc + mixed))


def _token_attention(queries: torch.Tensor, keys: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
    """Softmax attention of pixels to each instance's tokens.

    queries (B, N, h, P, d) or (B, 1, h, P, d); keys (B, N, h, L, d); key_bias (B, N, 1, 1, L)
    holds 0 for usable tokens and -inf-like values for padding. Returns (B, N, h, P, L).
    """
    scale = keys.shape[-1] ** -0.5
    if queries.shape[1] == 1 and keys.shape[1] > 1:
        # one shared query: a single (P x d) @ (d x N*L) product instead of broadcasting the
        # queries N times; the softmax runs in that contiguous (B, h, P, N, L) layout
        batch, num, heads, length, dim = keys.shape
        flat = keys.permute(0, 2, 4, 1, 3).reshape(batch, heads, dim, num * length)
        logits = (queries[:, 0] @ flat).unflatten(-1, (num, length))  # (B, h, P, N, L)
        probs = _softmax_last(logits * scale + key_bias[:, :, 0, 0].unsqueeze(1).unsqueeze(1))
        return probs.permute(0, 3, 1, 2, 4)
    return _softmax_last((queries @ keys.transpose(-1, -2)) * scale + key_bias)


def _softmax_last(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last axis; about 4x faster on CPU than torch's kernel for L ~ 10-20."""
    shifted = (logits - logits.amax(dim=-1, keepdim=True).detach()).exp()
    return shifted / shifted.sum(dim=-1, keepdim=True)


class LayoutBranch(nn.Module):
    """The layout branch (IDM or adapter-only) of one attention layer: its weights and steps 1-5.
    The attention processors (models/processors.py) subclass it and add the backbone's own
    attention, whose image features are e_{n+1} and whose output the branch is added to.

    The branch keeps features split into heads, (B, K, h, P, d), from the token attention to
    the composition, so the per-instance tensors are never transposed or copied.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        token_dim: int,
        use_idm: bool = True,
        idm_hidden: int = 128,
        patch: int = 1,
        geometry_rank: int = 32,
        share_query: bool = False,
    ):
        """share_query: query the instance tokens with the backbone's own image queries, as
        IP-Adapter's decoupled cross-attention does, instead of a trained ``to_q`` (dim^2 fewer
        weights per block: for a pretrained, frozen backbone whose queries already mean something)."""
        super().__init__()
        self.heads = heads
        self.use_idm = use_idm
        self.to_q = None if share_query else nn.Linear(dim, dim)
        # keys and values of the instance tokens, plus the keys seen by the refined features R+ / R-
        self.to_kv = nn.Linear(token_dim, (3 if use_idm else 2) * dim)
        if use_idm:
            self.idm = InstanceDisentanglementModule(dim, idm_hidden)
            # the mask branch at pixel precision: where each box runs inside a token cell and
            # where each pixel sits in the box, gated by the instance's layout token. Per-instance
            # work stays in a narrow space (geometry_rank wide) and is widened once per pixel,
            # after the sum over instances: this term costs N x P x rank, not N x P x dim.
            self.to_geometry = nn.Linear(6 * patch * patch, geometry_rank)
            self.geometry_gate = nn.Linear(token_dim, geometry_rank)
            self.geometry_out = nn.Linear(geometry_rank, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        nn.init.zeros_(self.to_out.weight)  # zero-initialised residual
        nn.init.zeros_(self.to_out.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(..., S, C) -> (..., h, S, d)."""
        return x.unflatten(-1, (self.heads, -1)).transpose(-2, -3)

    def instance_branch(
        self,
        hidden_states: torch.Tensor,
        global_features: torch.Tensor,
        layout: LayoutCondition,
        backbone_query: torch.Tensor | None = None,
        place_queries: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The layout branch's output (B, P, C) to add to the backbone's. ``backbone_query``
        (B, h, P, d): the backbone's own image queries, used instead of ``to_q`` when the
        processor shares them (``share_query``). ``place_queries`` maps the image queries
        (B, h, P, d) to queries that carry their pixel's position, for a backbone whose image
        tokens carry none (FLUX: rotary positions only, inside its own attention)."""
        num = layout.valid.shape[1]
        if self.to_q is None:
            if backbone_query is None:
                raise ValueError("a processor with share_query needs the backbone's queries")
            query = backbone_query
        else:
            query = self._heads(self.to_q(hidden_states))
        if place_queries is not None:
            query = place_queries(query)
        query = query.unsqueeze(1)  # (B, 1, h, P, d)
        projected = [
            self._heads(t) for t in self.to_kv(layout.tokens).chunk(3 if self.use_idm else 2, dim=-1)
        ]
        keys, values = projected[0], projected[1]  # (B, N, h, L, d)
        if not self.use_idm:
            return self.to_out(self._adapter_only(query, keys, values, layout))
        if keys.shape[-2] == 2:  # [null, layout] tokens only (the default): no per-instance features
            composed = self._two_token_idm(query[:, 0], projected, global_features, layout)
            return self.to_out(composed.transpose(1, 2).flatten(-2) + self._geometry(layout))

        # 1. enhanced features E: e_i for every instance at once; e_{n+1} is global_features
        probs = _token_attention(query, keys, layout.key_bias)  # (B, N, h, P, L)
        enhanced = probs @ values  # (B, N, h, P, d)
        # 2-3. masks M (all ones for e_{n+1}) and alpha = IDM(E, M) (Eq. 1); soft at the box edges
        masks = layout.coverage.to(enhanced.dtype)  # (B, N, P)
        alpha = self.idm(enhanced, global_features, masks, layout.valid).unflatten(-1, (self.heads, 1, -1))
        # 4. R+ = alpha E and R- = (1 - alpha) E (Eq. 2); alpha: (B, N+1, h, 1, d)
        refined = alpha[:, :num] * enhanced  # R+ of the instances
        refined_global = alpha[:, num] * self._heads(global_features)  # R+_{n+1}: (B, h, P, d)
        refined_keys = projected[2]
        probs_pos = _token_attention(refined, refined_keys, layout.key_bias)
        if layout.record_attention:
            spurious = (1.0 - alpha[:, :num]) * enhanced  # R-
            probs_neg = _token_attention(spurious, refined_keys, layout.key_bias)
            # attention mass on the instance's own tokens (positions 1:), appendix H
            layout.attention_maps.append(
                (probs_pos[..., 1:].sum(-1), probs_neg[..., 1:].sum(-1), layout.grid)
            )
        # 5. compose with the masks: (sum_i m_i CA(R+_i) + R+_{n+1}) / (sum_i m_i + 1)
        instance_out = probs_pos @ values  # (B, N, h, P, d)
        composed = (masks[:, :, None, :, None] * instance_out).sum(1) + refined_global
        composed = composed / (masks.sum(1) + 1.0)[:, None, :, None]
        return self.to_out(composed.transpose(1, 2).flatten(-2) + self._geometry(layout))

    def _geometry(self, layout: LayoutCondition) -> torch.Tensor:
        """(B, P, C): the pixel-precision geometry of every box, gated by its layout token."""
        masks = layout.coverage  # (B, N, P)
        gate = self.geometry_gate(layout.tokens[:, :, 1])  # (B, N, rank) from each layout token
        pixels = self.to_geometry(layout.geometry.flatten(-2).to(gate.dtype))  # (B, N, P, rank)
        geometry = (pixels * (masks.unsqueeze(-1).to(gate.dtype) * gate.unsqueeze(2))).sum(1)  # (B, P, rank)
        return self.geometry_out(geometry)

    def _two_token_idm(self, query, projected, global_features, layout: LayoutCondition) -> torch.Tensor:
        """Steps 1-5 of ``instance_branch`` when each instance has the two tokens [null, layout].

        A softmax over two keys is a sigmoid of a logit difference, so every attention here is
        one scalar per (instance, head, pixel): e_i = v0_i + p_i dv_i, R+_i = alpha_i e_i attends
        with sigmoid(s (alpha_i v0_i . dr_i + p_i alpha_i dv_i . dr_i)), and the IDM's masked
        means are sums of p over the masks. No (B, N, heads, P, d) tensor is ever built; the
        result equals the general path (tested). query (B, h, P, d); returns (B, h, P, d).
        """
        scale = query.shape[-1] ** -0.5
        (k0, k1), (v0, v1), (r0, r1) = [(t[..., 0, :], t[..., 1, :]) for t in projected]  # (B, N, h, d)
        dv, dr = v1 - v0, r1 - r0
        num_pixels = query.shape[2]
        # 1. e_i: the attention to the layout token, p (B, h, P, N)
        p = torch.sigmoid(scale * (query @ (k1 - k0).permute(0, 2, 3, 1)))
        # 2-3. masks and alpha = IDM(E, M) from masked means of e_i
        masks = layout.coverage.to(query.dtype)  # (B, N, P)
        m = masks.transpose(1, 2).unsqueeze(1)  # (B, 1, P, N)
        inside_mass, all_mass = masks.sum(-1), torch.full_like(masks[..., 0], float(num_pixels))  # (B, N)
        p_inside = (p * m).sum(2).transpose(1, 2).unsqueeze(-1)  # (B, N, h, 1)
        p_all = p.sum(2).transpose(1, 2).unsqueeze(-1)

        def mean(mass, p_mass):
            total = v0 * mass[..., None, None] + dv * p_mass
            return (total / mass.clamp(min=1.0)[..., None, None]).flatten(2)  # (B, N, C)

        alpha = self.idm.weights(
            mean(inside_mass, p_inside),
            mean(all_mass - inside_mass, p_all - p_inside),
            global_features,
            masks,
            layout.valid,
        ).unflatten(-1, (self.heads, -1))  # (B, N+1, h, d)
        num = masks.shape[1]

        def layout_attention(weights):  # R = weights * e_i attending to [null, layout]: (B, h, P, N)
            offset = ((weights * v0) * dr).sum(-1).transpose(1, 2).unsqueeze(2)  # (B, h, 1, N)
            slope = ((weights * dv) * dr).sum(-1).transpose(1, 2).unsqueeze(2)
            return torch.sigmoid(scale * (offset + p * slope))

        # 4. R+ = alpha E, R- = (1 - alpha) E (Eq. 2) and their attention to the instance's tokens
        p_pos = layout_attention(alpha[:, :num])
        if layout.record_attention:
            p_neg = layout_attention(1.0 - alpha[:, :num])
            layout.attention_maps.append((p_pos.permute(0, 3, 1, 2), p_neg.permute(0, 3, 1, 2), layout.grid))
        # 5. compose: (sum_i m_i CA(R+_i) + R+_{n+1}) / (sum_i m_i + 1), CA(R+_i) = v0_i + p_pos dv_i
        weights = torch.cat([m.expand_as(p_pos), m * p_pos], dim=-1)  # (B, h, P, 2N)
        composed = weights @ torch.cat([v0, dv], dim=1).transpose(1, 2)  # (B, h, P, d)
        composed = composed + alpha[:, num].unsqueeze(2) * self._heads(global_features)
        return composed / (masks.sum(1) + 1.0)[:, None, :, None]

    def _adapter_only(self, query, keys, values, layout: LayoutCondition) -> torch.Tensor:
        """One cross-attention over the tokens of all instances (no masks, no IDM)."""
        batch, num, heads, length, dim = keys.shape
        flat_keys = keys.transpose(1, 2).reshape(batch, 1, heads, num * length, dim)
        flat_values = values.transpose(1, 2).reshape(batch, 1, heads, num * length, dim)
        flat_bias = layout.key_bias.transpose(1, -1).reshape(batch, 1, 1, 1, num * length)
        probs = _token_attention(query, flat_keys, flat_bias)  # (B, 1, h, P, N*L)
        if layout.record_attention:
            per_instance = probs[:, 0].unflatten(-1, (num, length))[..., 1:].sum(-1)  # (B, h, P, N)
            maps = per_instance.permute(0, 3, 1, 2)
            layout.attention_maps.append((maps, maps, layout.grid))
        return (probs @ flat_values)[:, 0].transpose(1, 2).flatten(-2)
