"""idruid.rl.critic: the critic phi(s_t) of Eq. 7-8: output shapes, its value on a batch against
a loop over rows and instances, its box crops against bilinear sampling written out, and that
fitting it to a fixed synthetic reward brings the MSE well below the reward's variance."""

import math

import pytest
import torch

from idruid.rl.critic import CROP, Critic, box_crops, critic_loss

CHANNELS, CAPTION_DIM = 3, 8


def _batch(rows: int, instances: int, side: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, CHANNELS, side, side, generator=gen)
    time = torch.rand(rows, generator=gen)
    captions = torch.randn(rows, instances, CAPTION_DIM, generator=gen)
    corners = torch.rand(rows, instances, 2, 2, generator=gen).sort(dim=2).values  # x0 <= x1, y0 <= y1
    boxes = torch.stack([corners[..., 0, 0], corners[..., 0, 1], corners[..., 1, 0], corners[..., 1, 1]], -1)
    valid = torch.rand(rows, instances, generator=gen) < 0.7
    valid[:, 0] = True
    return x, time, captions, boxes, valid


@pytest.fixture(scope="module")
def critic():
    torch.manual_seed(0)
    return Critic(CHANNELS, CAPTION_DIM, hidden=16, fourier_freqs=4).eval()


@pytest.mark.parametrize(("rows", "instances"), [(1, 1), (3, 4), (5, 10)])
def test_output_shapes(critic, rows, instances):
    x, time, captions, boxes, valid = _batch(rows, instances)
    with torch.no_grad():
        assert critic(x, time, captions, boxes, valid).shape == (rows,)
        assert critic(x, time, captions, boxes, valid, per_instance=True).shape == (rows, instances)
    assert box_crops(x, boxes).shape == (rows, instances, CHANNELS * CROP**2)
    assert box_crops(x, boxes, size=2).shape == (rows, instances, CHANNELS * 4)


def test_batch_value_equals_a_loop_over_rows_and_instances(critic):
    """Each instance is scored from its own crop, caption, box, the row's summary and time only:
    the batched values equal one call per row and instance, summed over the valid instances."""
    x, time, captions, boxes, valid = _batch(4, 3, seed=1)
    with torch.no_grad():
        batched = critic(x, time, captions, boxes, valid)
        per_instance = critic(x, time, captions, boxes, valid, per_instance=True)
        naive = torch.zeros(4)
        for b in range(4):
            for n in range(3):
                one = slice(n, n + 1)
                score = critic(
                    x[b : b + 1],
                    time[b : b + 1],
                    captions[b : b + 1, one],
                    boxes[b : b + 1, one],
                    torch.ones(1, 1, dtype=torch.bool),
                    per_instance=True,
                )[0, 0]
                expected = score if valid[b, n] else torch.tensor(0.0)
                torch.testing.assert_close(per_instance[b, n], expected, atol=1e-5, rtol=1e-5)
                naive[b] += expected
    torch.testing.assert_close(batched, naive, atol=1e-5, rtol=1e-5)


def test_the_value_does_not_depend_on_the_order_of_the_instances(critic):
    x, time, captions, boxes, valid = _batch(2, 5, seed=2)
    order = torch.tensor([3, 0, 4, 2, 1])
    with torch.no_grad():
        value = critic(x, time, captions, boxes, valid)
        shuffled = critic(x, time, captions[:, order], boxes[:, order], valid[:, order])
    torch.testing.assert_close(value, shuffled, atol=1e-5, rtol=1e-5)


def _bilinear(image: torch.Tensor, u: float, v: float) -> torch.Tensor:
    """grid_sample's bilinear rule (align_corners=False, zero padding) at unit coordinates (u, v)
    of image (C, H, W): pixel centres at (k + 0.5) / size."""
    height, width = image.shape[1:]
    px, py = u * width - 0.5, v * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    fx, fy = px - x0, py - y0
    out = torch.zeros(image.shape[0])
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            row, col = y0 + dy, x0 + dx
            if 0 <= row < height and 0 <= col < width:
                out += wy * wx * image[:, row, col]
    return out


def test_box_crops_equal_bilinear_samples_written_out():
    """Feature c * size^2 + i * size + j of an instance is channel c at cell (row i, column j)
    of the size x size grid of cell centres inside its box."""
    x, _, _, boxes, _ = _batch(2, 3, side=6, seed=3)
    size = 3
    crops = box_crops(x, boxes, size=size)
    for b in range(2):
        for n in range(3):
            x0, y0, x1, y1 = boxes[b, n].tolist()
            expected = torch.zeros(CHANNELS, size, size)
            for i in range(size):
                for j in range(size):
                    u = x0 + (x1 - x0) * (j + 0.5) / size
                    v = y0 + (y1 - y0) * (i + 0.5) / size
                    expected[:, i, j] = _bilinear(x[b], u, v)
            torch.testing.assert_close(crops[b, n], expected.flatten(), atol=1e-5, rtol=1e-5)


def test_fitting_a_fixed_synthetic_reward_beats_predicting_its_mean():
    """Reward: per valid instance, the mean of channel 0 inside its box plus its time-dependent
    weight, summed. After fitting, the MSE is under a tenth of the reward's variance (the MSE of
    the best constant) and far under the MSE before fitting."""
    torch.manual_seed(0)
    x, time, captions, boxes, valid = _batch(32, 3, seed=4)
    crops = box_crops(x, boxes)[..., : CROP**2]  # channel 0
    reward = ((crops.mean(-1) + time[:, None]) * valid).sum(1)  # (B,)
    critic = Critic(CHANNELS, CAPTION_DIM, hidden=32, fourier_freqs=4)
    optimiser = torch.optim.Adam(critic.parameters(), lr=3e-3)
    with torch.no_grad():
        before = critic_loss(critic(x, time, captions, boxes, valid), reward).item()
    for _ in range(300):
        loss = critic_loss(critic(x, time, captions, boxes, valid), reward)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        after = critic_loss(critic(x, time, captions, boxes, valid), reward).item()
    variance = reward.var(unbiased=False).item()
    assert after < 0.1 * variance and after < 0.05 * before
