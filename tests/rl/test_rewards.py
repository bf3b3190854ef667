"""The detector reward (Eq. 6) and its variants on hand-made detections; the critic (Eq. 7-8)."""

import numpy as np
import pytest
import torch

from idruid.data.shapes import render_layout_scene
from idruid.layout import Instance, Layout
from idruid.rl.critic import Critic, box_crops, critic_loss
from idruid.rl.rewards import REWARDS, LayoutReward, color_shares, match_instances
from idruid.scorers.analytic import AnalyticDetector, AnalyticSegmenter
from idruid.scorers.protocols import Detections


def _layouts():
    one = Layout(
        "p", (Instance("a red circle", (0.0, 0.0, 0.5, 0.5)), Instance("a blue square", (0.5, 0.5, 1.0, 1.0)))
    )
    two = Layout("q", (Instance("a green triangle", (0.2, 0.2, 0.6, 0.6)),))
    return [one, two]


def _detections():
    """Instance 1: exact box, conf 0.9; instance 2: half the box (IoU 0.5), conf 0.4; image 2: nothing."""
    exact = Detections(
        np.array([[0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 0.7, 0.7]], np.float32), np.array([0.9, 0.3], np.float32)
    )
    half = Detections(np.array([[0.5, 0.5, 1.0, 0.75]], np.float32), np.array([0.4], np.float32))
    none = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    return [[exact, half], [none]]


def test_matches_by_hand():
    matches = match_instances(_detections(), _layouts())
    torch.testing.assert_close(matches.iou, torch.tensor([[1.0, 0.5], [0.0, 0.0]]))
    torch.testing.assert_close(matches.confidence, torch.tensor([[0.9, 0.4], [0.0, 0.0]]))
    assert matches.valid.tolist() == [[True, True], [True, False]]


@pytest.mark.parametrize(
    ("variant", "weight", "expected"),
    [
        ("iou", 1.0, [1.5, 0.0]),
        ("iou_conf", 1.0, [1.5 + 1.3, 0.0]),
        ("iou_conf", 5.0, [1.5 + 6.5, 0.0]),
        ("false", 1.0, [-2.8, 0.0]),
    ],
)
def test_reward_variants(variant, weight, expected):
    matches = match_instances(_detections(), _layouts())
    torch.testing.assert_close(REWARDS[variant](matches, weight).sum(dim=1), torch.tensor(expected))


def test_instance_rewards_are_the_terms_of_the_reward():
    """LayoutReward keeps each instance's term (for rl.credit=instance); they sum to the reward."""

    reward = LayoutReward(_Fixed(), "iou_conf", 1.0)
    terms = reward.instance_rewards(np.zeros((2, 8, 8, 3), np.uint8), _layouts())
    torch.testing.assert_close(terms, torch.tensor([[1.9, 0.9], [0.0, 0.0]]))
    torch.testing.assert_close(reward(np.zeros((2, 8, 8, 3), np.uint8), _layouts()), torch.tensor([2.8, 0.0]))


class _Fixed:
    def detect(self, images, captions):
        return _detections()


def test_the_box_threshold_drops_unsure_detections():
    """At threshold 0.5 the second instance's only box (conf 0.4) is not reported: IoU and
    confidence 0, as GroundingDINO reports nothing below its threshold."""
    images = np.zeros((2, 8, 8, 3), np.uint8)
    terms = LayoutReward(_Fixed(), "iou_conf", 1.0, threshold=0.5).instance_rewards(images, _layouts())
    torch.testing.assert_close(terms, torch.tensor([[1.9, 0.0], [0.0, 0.0]]))
    at_own_score = LayoutReward(_Fixed(), "iou_conf", 1.0, threshold=0.4).instance_rewards(images, _layouts())
    torch.testing.assert_close(at_own_score, torch.tensor([[1.9, 0.9], [0.0, 0.0]]))  # >= keeps it
    with pytest.raises(ValueError, match="threshold"):
        LayoutReward(_Fixed(), threshold=1.0)


def test_colour_shares_by_hand():
    """A 16x16 image: the red circle's box (top-left 8x8) holds 16 red, 16 blue and 32 grey pixels;
    the blue square's box (bottom-right) 48 blue and 16 grey; the analytic segmenter keeps the
    non-grey pixels, so the shares are 16/32 and 48/48."""
    image = np.full((1, 16, 16, 3), 128, np.uint8)
    image[0, 0:2, 0:8] = (220, 20, 20)  # red: 16 pixels
    image[0, 2:4, 0:8] = (20, 20, 220)  # blue inside the red circle's box: 16 pixels
    image[0, 10:16, 8:16] = (20, 20, 220)  # blue: 48 pixels in the square's box
    layout = Layout(
        "p", (Instance("a red circle", (0.0, 0.0, 0.5, 0.5)), Instance("a blue square", (0.5, 0.5, 1.0, 1.0)))
    )
    shares = color_shares(image, [layout], AnalyticSegmenter())
    torch.testing.assert_close(shares, torch.tensor([[0.5, 1.0]]))
    no_colour = Layout("p", (Instance("a circle", (0.0, 0.0, 0.5, 0.5)),))
    torch.testing.assert_close(color_shares(image, [no_colour], AnalyticSegmenter()), torch.tensor([[1.0]]))


def test_colour_gated_reward_scales_each_term_by_its_colour_share():
    matches = match_instances(_detections(), _layouts())
    matches.color_share = torch.tensor([[0.25, 0.9], [0.0, 0.0]])
    expected = torch.tensor([[1.9 * 0.5, 0.9 * 1.0], [0.0, 0.0]])  # min(1, share / 0.5)
    torch.testing.assert_close(REWARDS["iou_conf_color"](matches, 1.0), expected)
    with pytest.raises(ValueError, match="segmenter"):
        LayoutReward(_Fixed(), "iou_conf_color")


def test_colour_gated_reward_sees_a_box_another_colour_fills():
    """A render of two shapes, then the blue square's box painted red outside the square's middle:
    the detector still finds a blue square spanning its box (Eq. 6 pays it in full), the colour
    share is low and the gated term falls."""
    layout = Layout(
        "p",
        (Instance("a red square", (0.0, 0.0, 0.375, 0.375)), Instance("a blue square", (0.5, 0.5, 1.0, 1.0))),
    )
    image = np.full((1, 32, 32, 3), 128, np.uint8)
    image[0, 0:12, 0:12] = (210, 30, 30)
    image[0, 16:32, 16:32] = (210, 30, 30)  # the blue square's box filled with red ...
    image[0, 16:32, 23:25] = (40, 70, 220)  # ... but for a blue bar
    image[0, 16, 16:32] = (40, 70, 220)  # and a blue rim along its top and bottom, spanning the box
    image[0, 31, 16:32] = (40, 70, 220)
    plain = LayoutReward(AnalyticDetector(), "iou_conf").matches(image, [layout])
    assert float(plain.iou[0, 1]) == pytest.approx(1.0)
    gated = LayoutReward(AnalyticDetector(), "iou_conf_color", segmenter=AnalyticSegmenter())
    terms = gated.instance_rewards(image, [layout])
    assert float(terms[0, 1]) < 0.5 * float(REWARDS["iou_conf"](plain, 1.0)[0, 1])
    assert float(terms[0, 0]) == pytest.approx(float(REWARDS["iou_conf"](plain, 1.0)[0, 0]))


def test_layout_reward_on_renders_prefers_the_right_layout():
    """Ground-truth renders earn nearly 2 per instance; the same images under shuffled captions less."""
    from idruid.data.shapes import benchmark_layouts

    layouts = benchmark_layouts("shapes-mig")[:40:4]
    images = np.stack([render_layout_scene(layout) for layout in layouts])
    reward = LayoutReward(AnalyticDetector())
    right = reward(images, layouts)
    counts = torch.tensor([len(layout.instances) for layout in layouts], dtype=torch.float32)
    assert (right >= 1.8 * counts).float().mean() >= 0.9
    wrong = reward(images[::-1].copy(), layouts)
    assert (wrong < right).all()
    with pytest.raises(ValueError, match="unknown reward"):
        LayoutReward(AnalyticDetector(), "iou_squared")


def test_box_crops_sample_inside_each_box():
    """On an image whose channels are the x and y coordinates, bilinear crops return cell centres."""
    size = 16
    centres = (torch.arange(size) + 0.5) / size
    image = torch.stack([centres.expand(size, size), centres[:, None].expand(size, size)])[
        None
    ]  # (1, 2, H, W)
    boxes = torch.tensor([[[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.5, 0.25]]])
    crops = box_crops(image, boxes, size=2).view(1, 2, 2, 2, 2)  # (B, N, C, 2, 2)
    torch.testing.assert_close(crops[0, 0, 0], torch.tensor([[0.375, 0.625], [0.375, 0.625]]))
    torch.testing.assert_close(crops[0, 0, 1], torch.tensor([[0.625, 0.625], [0.875, 0.875]]))
    torch.testing.assert_close(crops[0, 1, 0], torch.tensor([[0.125, 0.375], [0.125, 0.375]]))


def test_critic_ignores_padding_and_learns_a_reward():
    torch.manual_seed(0)
    critic = Critic(in_channels=3, caption_dim=8, hidden=32)
    x, sigma = torch.randn(4, 3, 8, 8), torch.rand(4)
    captions, boxes = torch.randn(4, 2, 8), torch.rand(4, 2, 4).sort(-1).values
    valid = torch.tensor([[True, True], [True, False], [True, True], [True, False]])
    base = critic(x, sigma, captions, boxes, valid)
    padded = critic(
        x,
        sigma,
        torch.cat([captions, torch.randn(4, 1, 8)], 1),
        torch.cat([boxes, torch.rand(4, 1, 4)], 1),
        torch.cat([valid, torch.zeros(4, 1, dtype=torch.bool)], 1),
    )
    torch.testing.assert_close(base, padded)
    target = valid.sum(1).float() * 1.5  # a reward that grows with the instance count
    optimiser = torch.optim.Adam(critic.parameters(), lr=3e-3)
    first = critic_loss(critic(x, sigma, captions, boxes, valid), target).item()
    for _ in range(100):
        loss = critic_loss(critic(x, sigma, captions, boxes, valid), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.01 * first


def test_critic_per_instance_scores_sum_to_its_value():
    torch.manual_seed(0)
    critic = Critic(in_channels=3, caption_dim=8, hidden=16)
    x, sigma = torch.randn(3, 3, 8, 8), torch.rand(3)
    captions, boxes = torch.randn(3, 4, 8), torch.rand(3, 4, 4).sort(-1).values
    valid = torch.tensor([[True, True, False, False], [True, True, True, True], [True, False, False, False]])
    scores = critic(x, sigma, captions, boxes, valid, per_instance=True)
    assert scores.shape == (3, 4) and (scores[~valid] == 0).all()
    torch.testing.assert_close(scores.sum(1), critic(x, sigma, captions, boxes, valid))


def test_critic_loss_by_hand():
    predicted, reward = torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([2.0, 0.0])
    assert critic_loss(predicted, reward).item() == pytest.approx((1.0 + 4.0) / 2)
    per_instance = torch.tensor([[1.0, 2.0, 7.0]])  # the third instance is padding
    target, valid = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[True, True, False]])
    assert critic_loss(per_instance, target, valid).item() == pytest.approx((1.0 + 4.0) / 2)
