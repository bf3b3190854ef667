"""The detector reward of the RL stage (paper Eq. 6) and its variants (appendix D and G).

r = sum_i [IoU(b_pred,i, b_i) + k * c_pred,i]: for every instance, the detector is asked for
its caption and returns its best box and confidence; the box is compared with the layout's.
The per-instance terms are kept too, for the RL stage's per-instance credit (``rl.credit``).
Variants, selected by name (REWARDS):

- ``iou``: the IoU term alone (Table 4, "+ IoU");
- ``iou_conf``: IoU + k * confidence, k = ``confidence_weight`` (k = 1 is the paper's reward,
  k = 5 Table 4's "+ 5Conf");
- ``false``: the negated ``iou_conf`` reward (Table 6, robustness to a false reward);
- ``iou_conf_color``: ``iou_conf`` times the instance's colour share: how much of its target box
  (segmented as COCO-MIG's colour check segments it) is in its caption's colour, full at half the
  box (COLOR_SHARE_FULL). The detector finds a box of the caption's colour and grades that object,
  so an instance whose box another instance's colour fills still earns its full term; this variant
  sees the box as the benchmarks' colour check and leakage rate do.

The detector is any idruid.scorers.protocols.Detector: the analytic one in the shapes world,
GroundingDINO on real images; the colour share needs a segmenter (the analytic one, or SAM).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..boxes import box_iou
from ..colors import caption_color, color_membership
from ..layout import Layout
from ..metrics.checks import mask_color_fraction
from ..scorers.protocols import Detections, Detector, Segmenter
from ..scorers.registry import load_scorer

COLOR_SHARE_FULL = 0.5  # iou_conf_color: an instance's colour filling half its box earns the full term


@dataclass
class InstanceMatches:
    """Per-instance reward terms of a batch, padded to the largest layout."""

    iou: torch.Tensor  # (B, N) IoU of the best detected box with the layout box, 0 for padding
    confidence: torch.Tensor  # (B, N) the detector's confidence in that box, 0 for padding
    valid: torch.Tensor  # (B, N) bool
    # (B, N) share of each target box's segmented pixels in the caption's colour (1 where the
    # caption names none, 0 for padding); None when the reward has no segmenter
    color_share: torch.Tensor | None = None


def match_instances(detections: Sequence[Sequence[Detections]], layouts: Sequence[Layout]) -> InstanceMatches:
    """Best box and confidence per caption against each layout box, for all instances at once."""
    if len(detections) != len(layouts):
        raise ValueError(f"got detections for {len(detections)} images but {len(layouts)} layouts")
    batch, num = len(layouts), max((len(layout.instances) for layout in layouts), default=0)
    predicted = np.zeros((batch, num, 4), dtype=np.float64)
    targets = np.zeros((batch, num, 4), dtype=np.float64)
    confidence = np.zeros((batch, num), dtype=np.float64)
    valid = np.zeros((batch, num), dtype=bool)
    for b, (found, layout) in enumerate(zip(detections, layouts, strict=True)):
        if len(found) != len(layout.instances):
            raise ValueError(f"image {b}: {len(found)} detections for {len(layout.instances)} instances")
        for i, (dets, instance) in enumerate(zip(found, layout.instances, strict=True)):
            predicted[b, i], confidence[b, i] = dets.best
            targets[b, i] = instance.box
            valid[b, i] = True
    iou = np.where(valid, box_iou(predicted, targets), 0.0)
    confidence = np.where(valid, confidence, 0.0)
    return InstanceMatches(
        torch.from_numpy(iou).float(), torch.from_numpy(confidence).float(), torch.from_numpy(valid)
    )


def iou_terms(matches: InstanceMatches, confidence_weight: float = 1.0) -> torch.Tensor:
    """(B, N) each instance's IoU."""
    return matches.iou


def iou_confidence_terms(matches: InstanceMatches, confidence_weight: float = 1.0) -> torch.Tensor:
    """(B, N) Eq. 6's terms: IoU + confidence_weight * confidence per instance."""
    return matches.iou + confidence_weight * matches.confidence


def false_terms(matches: InstanceMatches, confidence_weight: float = 1.0) -> torch.Tensor:
    """(B, N) the negated Eq. 6 terms: appendix G's deliberately wrong signal."""
    return -iou_confidence_terms(matches, confidence_weight)


def iou_confidence_color_terms(matches: InstanceMatches, confidence_weight: float = 1.0) -> torch.Tensor:
    """(B, N) Eq. 6's terms, each times min(1, colour share / COLOR_SHARE_FULL)."""
    if matches.color_share is None:
        raise ValueError("the iou_conf_color reward needs a segmenter for the colour share (rl.segmenter)")
    gate = (matches.color_share / COLOR_SHARE_FULL).clamp(max=1.0)
    return iou_confidence_terms(matches, confidence_weight) * gate


# each variant gives the per-instance terms (B, N), zero for padding; the reward is their sum
RewardFn = Callable[[InstanceMatches, float], torch.Tensor]
REWARDS: dict[str, RewardFn] = {
    "iou": iou_terms,
    "iou_conf": iou_confidence_terms,
    "false": false_terms,
    "iou_conf_color": iou_confidence_color_terms,
}
NEEDS_SEGMENTER = ("iou_conf_color",)


def color_shares(images: np.ndarray, layouts: Sequence[Layout], segmenter: Segmenter) -> torch.Tensor:
    """(B, N) the share of each target box's segmented pixels that lie in its caption colour's
    COCO-MIG range (the quantity COCO-MIG's colour check compares with 20%): 1 where the caption
    names no colour, 0 for an empty mask and for padding."""
    num = max((len(layout.instances) for layout in layouts), default=0)
    shares = np.zeros((len(layouts), num), dtype=np.float64)
    masks = segmenter.segment(images, [np.asarray(layout.boxes, dtype=np.float64) for layout in layouts])
    for b, (image, layout, image_masks) in enumerate(zip(images, layouts, masks, strict=True)):
        membership = color_membership(image)  # (H, W, 7)
        for i, (caption, mask) in enumerate(zip(layout.captions, image_masks, strict=True)):
            color = caption_color(caption)
            shares[b, i] = 1.0 if color is None else mask_color_fraction(membership, mask, color)
    return torch.from_numpy(shares).float()


def reported(detections: Detections, threshold: float) -> Detections:
    """The detections a detector reports at box threshold ``threshold`` (score >= threshold, best
    first): GroundingDINO's post-processing, which the analytic detector leaves to its caller."""
    keep = detections.scores >= threshold
    return Detections(boxes=detections.boxes[keep], scores=detections.scores[keep])


class LayoutReward:
    """Scores generated images against their layouts: ``reward(images, layouts) -> (B,)``.

    ``threshold``: the detector's box threshold; an instance whose best detection scores below it
    was not detected (IoU and confidence 0), as GroundingDINO reports nothing below its threshold
    and COCO-MIG's scorer drops such boxes (0.25 both). 0 keeps every candidate, as the analytic
    detector returns them."""

    def __init__(
        self,
        detector: Detector,
        variant: str = "iou_conf",
        confidence_weight: float = 1.0,
        threshold: float = 0.0,
        segmenter: Segmenter | None = None,
    ):
        if variant not in REWARDS:
            raise ValueError(f"unknown reward {variant!r} (known: {', '.join(REWARDS)})")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"the reward's box threshold must be in [0, 1), got {threshold}")
        if variant in NEEDS_SEGMENTER and segmenter is None:
            raise ValueError(f"the {variant} reward needs a segmenter for the colour share")
        self.detector, self.variant, self.confidence_weight = detector, variant, confidence_weight
        self.threshold, self.segmenter = threshold, segmenter

    def matches(self, images: np.ndarray, layouts: Sequence[Layout]) -> InstanceMatches:
        """Detect every caption of a batch in one detector call and match the boxes (and, with a
        segmenter, measure each target box's colour share)."""
        detections = self.detector.detect(images, [layout.captions for layout in layouts])
        if self.threshold > 0:
            detections = [[reported(d, self.threshold) for d in row] for row in detections]
        matches = match_instances(detections, layouts)
        if self.segmenter is not None and self.variant in NEEDS_SEGMENTER:
            matches.color_share = color_shares(images, layouts, self.segmenter)
        return matches

    def instance_rewards(self, images: np.ndarray, layouts: Sequence[Layout]) -> torch.Tensor:
        """(B, N) each instance's term of the reward, N the batch's largest layout, 0 for padding."""
        return REWARDS[self.variant](self.matches(images, layouts), self.confidence_weight)

    def __call__(self, images: np.ndarray, layouts: Sequence[Layout]) -> torch.Tensor:
        """(B,) the reward of each image: its instances' terms summed (Eq. 6)."""
        return self.instance_rewards(images, layouts).sum(dim=1)


def build_reward(rl, device: str = "cpu") -> LayoutReward:
    """The reward of an RL config (``TrainConfig.rl``): its detector, variant, confidence weight,
    threshold, and the segmenter the colour-gated variants need, loaded on ``device``."""
    segmenter = load_scorer("segmenter", rl.segmenter, device) if rl.reward in NEEDS_SEGMENTER else None
    return LayoutReward(
        load_scorer("detector", rl.detector, device),
        rl.reward,
        rl.confidence_weight,
        rl.reward_threshold,
        segmenter,
    )

