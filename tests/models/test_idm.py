import math

import pytest
import torch
from diffusers import SD3Transformer2DModel
from diffusers.models.attention_processor import JointAttnProcessor2_0

from idruid.boxes import covering_cells, patch_geometry
from idruid.losses import disentangle_loss
from idruid.models.adapter import LayoutAdapter, fourier_embed
from idruid.models.idm import LayoutCondition
from idruid.models.processors import LayoutJointAttnProcessor

DIM, HEADS, SIDE = 32, 2, 4  # 16x16 image, patch 4 -> 4x4 tokens


def tiny_transformer(seed=0):
    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=16,
        patch_size=4,
        in_channels=3,
        out_channels=3,
        num_layers=2,
        attention_head_dim=DIM // HEADS,
        num_attention_heads=HEADS,
        joint_attention_dim=24,
        caption_projection_dim=DIM,
        pooled_projection_dim=24,
        pos_embed_max_size=8,
    )


def inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, 3, 16, 16, generator=g),
        encoder_hidden_states=torch.randn(batch, 5, 24, generator=g),
        pooled_projections=torch.randn(batch, 24, generator=g),
        timestep=torch.tensor([300.0, 800.0])[:batch],
        return_dict=False,
    )


def condition(batch=2, num=3, length=4, valid_counts=(3, 2), seed=0, record=False, pad_last=True):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, num, length, DIM, generator=g)
    valid = torch.zeros(batch, num, dtype=torch.bool)
    for b, count in enumerate(valid_counts):
        valid[b, :count] = True
    token_mask = torch.ones(batch, num, length, dtype=torch.bool)
    if pad_last:
        token_mask[:, :, -1] = False  # one padded caption token
    corners = torch.rand(batch, num, 2, 2, generator=g).sort(dim=2).values
    boxes = torch.stack([corners[..., 0, 0], corners[..., 0, 1], corners[..., 1, 0], corners[..., 1, 1]], -1)
    boxes = boxes * valid.unsqueeze(-1)
    return LayoutCondition(tokens, token_mask, boxes, valid, torch.ones(batch), (SIDE, SIDE), 4, record)


def install(model, use_idm=True, zero_out=True, seed=1):
    torch.manual_seed(seed)
    procs = {
        n: LayoutJointAttnProcessor(DIM, HEADS, DIM, use_idm, idm_hidden=16, patch=4)
        for n in model.attn_processors
    }
    model.set_attn_processor(dict(procs))  # diffusers pops from the dict it is given
    if not zero_out:
        for proc in procs.values():
            torch.nn.init.normal_(proc.to_out.weight, std=0.2)
    return procs


def test_processor_without_layout_matches_diffusers_joint_attention():
    model = tiny_transformer()
    model.set_attn_processor(JointAttnProcessor2_0())
    reference = model(**inputs())[0]
    install(model)
    assert torch.allclose(model(**inputs())[0], reference, atol=1e-5)
    # zero-initialised residual: an untrained layout branch leaves the backbone's output intact
    ours = model(**inputs(), joint_attention_kwargs={"layout": condition()})[0]
    assert torch.allclose(ours, reference, atol=1e-5)


def test_processors_are_registered_submodules_and_receive_layout():
    model = tiny_transformer()
    install(model, zero_out=False)
    names = [n for n, _ in model.named_parameters() if ".processor." in n]
    assert any(".processor.idm." in n for n in names) and any(".processor.to_kv." in n for n in names)
    plain = model(**inputs())[0]
    with_layout = model(**inputs(), joint_attention_kwargs={"layout": condition()})[0]
    assert not torch.allclose(plain, with_layout, atol=1e-4)  # the kwarg reached the processor


def naive_branch(proc, hidden, global_features, layout):
    """The IDM branch written per sample and per instance with explicit loops (Eq. 1-2)."""
    batch, num = layout.valid.shape
    heads, dim = proc.heads, hidden.shape[-1]
    d = dim // heads
    geo = patch_geometry(layout.boxes, 16, 16, 4) * layout.valid[..., None, None, None]  # (B, N, P, 16, 6)
    masks = geo[..., 0].mean(-1)  # soft masks: the share of each cell inside the box
    out = torch.zeros_like(hidden)
    for b in range(batch):
        q = proc.to_q(hidden[b]).view(-1, heads, d)  # (P, h, d)
        kv = proc.to_kv(layout.tokens[b])  # (N, L, 3C)
        k, v, k2 = kv.chunk(3, dim=-1)
        usable = layout.token_mask[b]
        feats = []
        for i in range(num):
            ki, vi = k[i][usable[i]].view(-1, heads, d), v[i][usable[i]].view(-1, heads, d)
            logits = torch.einsum("phd,lhd->hpl", q, ki) / math.sqrt(d)
            feats.append(torch.einsum("hpl,lhd->phd", logits.softmax(-1), vi).reshape(-1, dim))
        feats.append(global_features[b])
        features = torch.stack(feats)  # (N+1, P, C)
        m = torch.cat([masks[b], torch.ones(1, masks.shape[-1])])
        valid = torch.cat([layout.valid[b], torch.ones(1, dtype=torch.bool)])
        heads_view = features[:num].view(num, -1, heads, d).permute(0, 2, 1, 3).unsqueeze(0)
        alpha = proc.idm(
            heads_view, global_features[b : b + 1], m[:num].unsqueeze(0), valid[:num].unsqueeze(0)
        )[0]
        refined = alpha.unsqueeze(1) * features  # R+
        total = refined[num].clone()
        for i in range(num):
            ki2, vi = k2[i][usable[i]].view(-1, heads, d), v[i][usable[i]].view(-1, heads, d)
            r = refined[i].view(-1, heads, d)
            logits = torch.einsum("phd,lhd->hpl", r, ki2) / math.sqrt(d)
            ca = torch.einsum("hpl,lhd->phd", logits.softmax(-1), vi).reshape(-1, dim)
            total = total + m[i].unsqueeze(-1) * ca
        geometry = torch.zeros(hidden.shape[1], proc.geometry_gate.out_features)
        for i in range(num):
            gate = proc.geometry_gate(layout.tokens[b, i, 1])
            for p in range(hidden.shape[1]):
                geometry[p] += m[i, p] * proc.to_geometry(geo[b, i, p].flatten()) * gate
        out[b] = proc.to_out(total / (m[:num].sum(0).unsqueeze(-1) + 1.0) + proc.geometry_out(geometry))
    return out


def test_batched_idm_branch_matches_per_instance_loop():
    torch.manual_seed(0)
    proc = LayoutJointAttnProcessor(DIM, HEADS, DIM, use_idm=True, idm_hidden=16, patch=4)
    torch.nn.init.normal_(proc.to_out.weight, std=0.2)
    hidden, global_features = torch.randn(2, SIDE * SIDE, DIM), torch.randn(2, SIDE * SIDE, DIM)
    layout = condition()
    fast = proc.instance_branch(hidden, global_features, layout)
    assert torch.allclose(fast, naive_branch(proc, hidden, global_features, layout), atol=1e-5)


def test_two_token_path_matches_per_instance_loop_and_general_path():
    """[null, layout] tokens take the scalar-attention path; it must equal the per-instance loop,
    and the general path (the same tokens plus one masked token) in output and attention maps."""
    torch.manual_seed(0)
    proc = LayoutJointAttnProcessor(DIM, HEADS, DIM, use_idm=True, idm_hidden=16, patch=4)
    torch.nn.init.normal_(proc.to_out.weight, std=0.2)
    hidden, global_features = torch.randn(2, SIDE * SIDE, DIM), torch.randn(2, SIDE * SIDE, DIM)
    two = condition(length=2, pad_last=False, record=True)
    out = proc.instance_branch(hidden, global_features, two)
    assert torch.allclose(out, naive_branch(proc, hidden, global_features, two), atol=1e-5)
    three = LayoutCondition(
        torch.cat([two.tokens, torch.randn(2, 3, 1, DIM)], dim=2),
        torch.cat([two.token_mask, torch.zeros(2, 3, 1, dtype=torch.bool)], dim=2),
        two.boxes,
        two.valid,
        two.enabled,
        two.grid,
        two.patch,
        record_attention=True,
    )
    general = proc.instance_branch(hidden, global_features, three)
    assert torch.allclose(out, general, atol=1e-5)
    for fast_map, general_map in zip(two.attention_maps[0][:2], three.attention_maps[0][:2], strict=True):
        assert fast_map.shape == (2, 3, HEADS, SIDE * SIDE)
        assert torch.allclose(fast_map, general_map, atol=1e-5)


def test_padded_instance_slots_change_nothing():
    torch.manual_seed(0)
    proc = LayoutJointAttnProcessor(DIM, HEADS, DIM, use_idm=True, idm_hidden=16, patch=4)
    torch.nn.init.normal_(proc.to_out.weight, std=0.2)
    hidden, global_features = torch.randn(2, SIDE * SIDE, DIM), torch.randn(2, SIDE * SIDE, DIM)
    small = condition(num=3, valid_counts=(3, 2))
    big = condition(num=3, valid_counts=(3, 2))
    # append two padded slots holding garbage tokens
    pad = lambda t, fill: torch.cat([t, fill], dim=1)  # noqa: E731
    big = LayoutCondition(
        pad(small.tokens, 50 * torch.randn(2, 2, 4, DIM)),
        pad(small.token_mask, torch.ones(2, 2, 4, dtype=torch.bool)),
        pad(small.boxes, torch.zeros(2, 2, 4)),
        pad(small.valid, torch.zeros(2, 2, dtype=torch.bool)),
        small.enabled,
        small.grid,
        small.patch,
    )
    a = proc.instance_branch(hidden, global_features, small)
    b = proc.instance_branch(hidden, global_features, big)
    assert torch.allclose(a, b, atol=1e-5)


def test_idc_gradient_reaches_the_idm():
    model = tiny_transformer()
    procs = install(model)
    layout = condition(record=True)
    model(**inputs(), joint_attention_kwargs={"layout": layout})
    assert len(layout.attention_maps) == 2  # one (R+, R-) pair per joint-attention block
    pos, neg, grid = layout.attention_maps[0]
    assert grid == (SIDE, SIDE)
    assert pos.shape == (2, 3, HEADS, SIDE * SIDE) and neg.shape == pos.shape
    assert torch.all((pos >= 0) & (pos <= 1 + 1e-6))
    masks = covering_cells(layout.boxes, SIDE, SIDE) * layout.valid.unsqueeze(-1)
    maps = layout.attention_maps
    loss = torch.stack([disentangle_loss(p, n, masks, layout.valid) for p, n, _ in maps]).mean()
    loss.backward()
    proc = next(iter(procs.values()))
    idm_grads = [p.grad for p in proc.idm.parameters() if p.grad is not None]
    assert idm_grads and sum(g.abs().sum() for g in idm_grads) > 0
    assert proc.to_kv.weight.grad.abs().sum() > 0


def test_adapter_only_baseline_has_no_idm():
    model = tiny_transformer()
    procs = install(model, use_idm=False, zero_out=False)
    assert not any(hasattr(p, "idm") for p in procs.values())
    out = model(**inputs(), joint_attention_kwargs={"layout": condition()})[0]
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


def test_disabled_samples_get_the_backbone_output():
    model = tiny_transformer()
    install(model, zero_out=False)
    plain = model(**inputs())[0]
    layout = condition()
    layout.enabled = torch.tensor([1.0, 0.0])
    out = model(**inputs(), joint_attention_kwargs={"layout": layout})[0]
    assert torch.allclose(out[1], plain[1], atol=1e-5) and not torch.allclose(out[0], plain[0], atol=1e-4)


def test_fourier_embedding_hand_worked():
    emb = fourier_embed(torch.tensor([[0.5, 0.0, 0.25, 1.0]]), num_freqs=2)
    # per coordinate: [sin(pi x), sin(2 pi x), cos(pi x), cos(2 pi x)]
    expected = torch.tensor(
        [
            [
                1.0,
                0.0,
                0.0,
                -1.0,
                0.0,
                0.0,
                1.0,
                1.0,
                math.sqrt(0.5),
                1.0,
                math.sqrt(0.5),
                0.0,
                0.0,
                0.0,
                -1.0,
                1.0,
            ]
        ]
    )
    assert torch.allclose(emb, expected, atol=1e-6)


def test_layout_adapter_tokens_and_null_padding():
    torch.manual_seed(0)
    adapter = LayoutAdapter(text_dim=8, dim=DIM, num_freqs=4)
    boxes = torch.tensor([[[0.1, 0.1, 0.5, 0.5], [0, 0, 0, 0]]])
    valid = torch.tensor([[True, False]])
    hidden, pooled = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 8)
    mask = torch.tensor([[[True, True, False], [True, True, True]]])
    out = adapter(boxes, valid, hidden, pooled, mask)
    assert out.tokens.shape == (1, 2, 5, DIM)
    # padded slot: the learnable null instance token, and no caption token is attendable
    assert torch.allclose(out.tokens[0, 1, 1], adapter.null_instance)
    assert out.token_mask[0, 1].tolist() == [True, True, False, False, False]
    assert out.token_mask[0, 0].tolist() == [True, True, True, True, False]
    # the box changes the tokens
    moved = adapter(
        boxes + torch.tensor([0.2, 0.2, 0.2, 0.2]) * valid[..., None], valid, hidden, pooled, mask
    )
    assert not torch.allclose(moved.tokens[0, 0, 1], out.tokens[0, 0, 1])


@pytest.mark.parametrize("use_idm", [True, False])
def test_processor_handles_last_block_without_context_output(use_idm):
    model = tiny_transformer()
    install(model, use_idm=use_idm, zero_out=False)
    assert model.transformer_blocks[-1].context_pre_only
    out = model(**inputs(), joint_attention_kwargs={"layout": condition()})[0]
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("use_idm", [True, False])
def test_shared_query_is_the_backbones_own_projection(use_idm):
    """With share_query the branch uses the backbone's image queries: the same output as an own
    to_q holding the backbone's to_q weights, and dim^2 + dim fewer parameters per block."""
    model = tiny_transformer()
    names = list(model.attn_processors)
    torch.manual_seed(1)
    own = {n: LayoutJointAttnProcessor(DIM, HEADS, DIM, use_idm, idm_hidden=16, patch=4) for n in names}
    shared = {
        n: LayoutJointAttnProcessor(DIM, HEADS, DIM, use_idm, idm_hidden=16, patch=4, share_query=True)
        for n in names
    }
    for name in names:
        torch.nn.init.normal_(own[name].to_out.weight, std=0.2)
        own[name].to_q.load_state_dict(model.get_submodule(name.removesuffix(".processor")).to_q.state_dict())
        rest = {k: v for k, v in own[name].state_dict().items() if not k.startswith("to_q.")}
        shared[name].load_state_dict(rest)  # strict: everything but to_q is the same
    outputs = []
    for procs in (own, shared):
        model.set_attn_processor(dict(procs))
        outputs.append(model(**inputs(), joint_attention_kwargs={"layout": condition()})[0])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    size = [sum(p.numel() for proc in procs.values() for p in proc.parameters()) for procs in (own, shared)]
    assert size[0] - size[1] == 2 * (DIM * DIM + DIM)  # two blocks
