import math

import pytest
import torch
import torch.nn.functional as F

from idruid.boxes import covering_cells
from idruid.losses import (
    add_noise,
    cas,
    disentangle_loss,
    flow_matching_loss,
    idc_loss,
    sample_sigmas,
    velocity_target,
)


def naive_cas(attn, box_mask):
    """Eq. 3 with explicit loops: mean |a - mean_bg(a)| over background pixels."""
    B, N, H, P = attn.shape
    out = torch.zeros(B, N, H, dtype=attn.dtype)
    for b in range(B):
        for n in range(N):
            bg = [p for p in range(P) if box_mask[b, n, p] == 0]
            for h in range(H):
                if not bg:
                    continue
                mean = sum(attn[b, n, h, p].item() for p in bg) / len(bg)
                out[b, n, h] = sum(abs(attn[b, n, h, p].item() - mean) for p in bg) / len(bg)
    return out


def test_cas_hand_worked():
    # 4 pixels, the box covers pixel 0; background attention [0.2, 0.4, 0.6] -> mean 0.4, MAD 0.4/3
    attn = torch.tensor([0.9, 0.2, 0.4, 0.6]).view(1, 1, 1, 4)
    mask = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 4)
    assert cas(attn, mask).item() == pytest.approx(0.4 / 3, rel=1e-5)
    # a flat background has zero CAS whatever happens inside the box
    flat = torch.tensor([5.0, 0.3, 0.3, 0.3]).view(1, 1, 1, 4)
    assert cas(flat, mask).item() == pytest.approx(0.0, abs=1e-7)


def test_cas_matches_naive_loop():
    torch.manual_seed(0)
    attn = torch.rand(2, 3, 2, 12)
    mask = (torch.rand(2, 3, 12) > 0.6).float()
    assert torch.allclose(cas(attn, mask), naive_cas(attn, mask), atol=1e-5)


def test_cas_detaches_the_background_mean():
    attn = torch.tensor([0.9, 0.1, 0.5, 0.6]).view(1, 1, 1, 4).requires_grad_()
    mask = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 4)
    cas(attn, mask).sum().backward()
    # background mean 0.4; with it detached, d/da_p |a_p - m| / 3 = sign(a_p - m) / 3, and the
    # box pixel gets nothing (with the mean attached the gradients would sum to zero instead)
    expected = torch.tensor([0.0, -1 / 3, 1 / 3, 1 / 3]).view(1, 1, 1, 4)
    assert torch.allclose(attn.grad, expected, atol=1e-6)


def test_cas_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="must be"):
        cas(torch.rand(2, 3, 12), torch.rand(2, 3, 12))


def test_disentangle_loss_hand_worked():
    mask = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 4)
    pos = torch.tensor([0.9, 0.3, 0.3, 0.3]).view(1, 1, 1, 4)  # CAS 0
    neg = torch.tensor([0.9, 0.2, 0.4, 0.6]).view(1, 1, 1, 4)  # CAS 0.4/3
    expected = math.log(1 + math.exp(0.0 - 0.4 / 3))
    assert disentangle_loss(pos, neg, mask).item() == pytest.approx(expected, rel=1e-5)
    # equal maps give softplus(0) = ln 2
    assert disentangle_loss(neg, neg, mask).item() == pytest.approx(math.log(2), rel=1e-6)


def test_disentangle_loss_equals_paper_soft_margin_form():
    """Appendix H: SoftMarginLoss(CAS(R-) - CAS(R+), y=1) == softplus(CAS(R+) - CAS(R-))."""
    torch.manual_seed(1)
    pos, neg = torch.rand(2, 4, 2, 16), torch.rand(2, 4, 2, 16)
    mask = (torch.rand(2, 4, 16) > 0.5).float()
    h_pos, h_neg = naive_cas(pos, mask).mean(), naive_cas(neg, mask).mean()
    paper = torch.nn.SoftMarginLoss()((h_neg - h_pos).view(1), torch.ones(1))
    assert disentangle_loss(pos, neg, mask).item() == pytest.approx(paper.item(), rel=1e-5)


def test_disentangle_loss_ignores_padded_instances():
    torch.manual_seed(2)
    pos, neg = torch.rand(1, 3, 2, 16), torch.rand(1, 3, 2, 16)
    mask = (torch.rand(1, 3, 16) > 0.5).float()
    valid = torch.tensor([[True, True, False]])
    expected = disentangle_loss(pos[:, :2], neg[:, :2], mask[:, :2])
    garbage = pos.clone()
    garbage[:, 2] = 100 * torch.rand(2, 16)
    assert disentangle_loss(garbage, neg, mask, valid).item() == pytest.approx(expected.item(), rel=1e-6)


def test_disentangle_loss_gradient_by_finite_differences():
    torch.manual_seed(3)
    pos = torch.rand(1, 2, 1, 8, dtype=torch.float64, requires_grad=True)
    neg = torch.rand(1, 2, 1, 8, dtype=torch.float64)
    mask = (torch.rand(1, 2, 8) > 0.5).double()
    disentangle_loss(pos, neg, mask).backward()
    eps = 1e-6
    for idx in [(0, 0, 0, k) for k in range(8)]:
        if mask[0, 0, idx[-1]] == 1:
            continue
        plus, minus = pos.detach().clone(), pos.detach().clone()
        plus[idx] += eps
        minus[idx] -= eps
        # finite differences of the detached-mean version: hold the mean at its current value
        numeric = (_loss_mean_fixed(plus, neg, mask, pos) - _loss_mean_fixed(minus, neg, mask, pos)) / (
            2 * eps
        )
        assert pos.grad[idx].item() == pytest.approx(numeric, rel=1e-4, abs=1e-8)


def _loss_mean_fixed(pos, neg, mask, pos_ref):
    """L_dis with CAS(R+)'s background means frozen at pos_ref (what .detach() means)."""
    bg = 1 - mask.unsqueeze(2)
    count = bg.sum(-1) + 1e-6
    mean_ref = (pos_ref.detach() * bg).sum(-1) / count
    cas_pos = ((pos - mean_ref.unsqueeze(-1)).abs() * bg).sum(-1) / count
    return F.softplus(cas_pos.mean() - cas(neg, mask).mean()).item()


def test_idc_loss_averages_l_dis_over_layers_on_their_own_grids():
    """idc_loss: the mean of each layer's L_dis against the box masks of that layer's grid (a UNet's
    8x8 and 16x16), on the instance slots the model kept (N below the padded boxes), padding out."""
    torch.manual_seed(0)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.25, 1.0, 1.0], [0.0] * 4]] * 2)
    valid = torch.tensor([[True, True, False], [True, False, False]])
    layers = [
        (torch.rand(2, 2, 3, 64), torch.rand(2, 2, 3, 64), (8, 8)),
        (torch.rand(2, 2, 3, 256), torch.rand(2, 2, 3, 256), (16, 16)),
        (torch.rand(2, 2, 3, 64), torch.rand(2, 2, 3, 64), (8, 8)),
    ]
    expected = []
    for pos, neg, grid in layers:
        mask = covering_cells(boxes[:, :2], *grid) * valid[:, :2, None].float()
        expected.append(disentangle_loss(pos, neg, mask, valid[:, :2]))
    got = idc_loss(layers, boxes, valid)
    assert got.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-6)


def test_flow_matching_path_and_loss():
    x0, noise = torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 2, 2), -1.0)
    assert torch.allclose(add_noise(x0, noise, torch.tensor([0.25])), torch.full((1, 1, 2, 2), 1.25))
    assert torch.equal(velocity_target(x0, noise), torch.full((1, 1, 2, 2), -3.0))
    assert flow_matching_loss(torch.full((1, 1, 2, 2), -1.0), x0, noise).item() == pytest.approx(4.0)
    # the path's time derivative d x_t / d sigma is exactly the velocity target
    s = torch.tensor([0.3])
    d = (add_noise(x0, noise, s + 1e-3) - add_noise(x0, noise, s - 1e-3)) / 2e-3
    assert torch.allclose(d, velocity_target(x0, noise), atol=1e-3)


def test_sigma_sampling_range():
    g = torch.Generator().manual_seed(0)
    for mode in ("logit_normal", "uniform"):
        s = sample_sigmas(1000, mode, generator=g)
        assert s.min() > 0 and s.max() < 1
    with pytest.raises(ValueError, match="time_sampling"):
        sample_sigmas(2, "cosine")
