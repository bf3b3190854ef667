"""The detector reward of the RL stage (paper Eq. 6) and its variants (appendix D and G).

r = sum_i [IoU(b_pred,i, b_i) + k * c_pred,i]: for every instance, the detector is asked for
its caption and returns its best box and confidence; the box is compared with the layout's.
The per-instance terms are kept too, for the RL stage's per-instance credit (``rl.credit``).
Variants, selected by name (REWARDS):

- ``iou``: the IoU term alone (Table 4, "+ IoU");
- ``iou_conf``: IoU + k * confidence, k = ``confidence_weight`` (k = 1 is the paper's reward,
  k = 5 Table 4's "+ 5Conf");
- ``false``: the negated ``iou_conf`` reward (Table 6, robustness to a false reward).

The detector is any idruid.scorers.protocols.Detector: the analytic one in the shapes world,
GroundingDINO on real images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..boxes import box_iou
from ..layout import Layout
from ..scorers.protocols import Detections, Detector


@dataclass
class InstanceMatches:
    """Per-instance reward terms of a batch, padded to the largest layout."""

    iou: torch.Tensor  # (B, N) IoU of the best detected box with the layout box, 0 for padding
    confidence: torch.Tensor  # (B, N) the detector's confidence in that box, 0 for padding
    valid: torch.Tensor  # (B, N) bool


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


# each variant gives the per-instance terms (B, N), zero for padding; the reward is their sum
RewardFn = Callable[[InstanceMatches, float], torch.Tensor]
REWARDS: dict[str, RewardFn] = {"iou": iou_terms, "iou_conf": iou_confidence_terms, "false": false_terms}


class LayoutReward:
    """Scores generated images against their layouts: ``reward(images, layouts) -> (B,)``."""

    def __init__(self, detector: Detector, variant: str = "iou_conf", confidence_weight: float = 1.0):
        if variant not in REWARDS:
            raise ValueError(f"unknown reward {variant!r} (known: {', '.join(REWARDS)})")
        self.detector, self.variant, self.confidence_weight = detector, variant, confidence_weight

    def matches(self, images: np.ndarray, layouts: Sequence[Layout]) -> InstanceMatches:
        """Detect every caption of a batch in one detector call and match the boxes."""
        return match_instances(self.detector.detect(images, [layout.captions for layout in layouts]), layouts)

    def instance_rewards(self, images: np.ndarray, layouts: Sequence[Layout]) -> torch.Tensor:
        """(B, N) each instance's term of the reward, N the batch's largest layout, 0 for padding."""
        return REWARDS[self.variant](self.matches(images, layouts), self.confidence_weight)

    def __call__(self, images: np.ndarray, layouts: Sequence[Layout]) -> torch.Tensor:
        """(B,) the reward of each image: its instances' terms summed (Eq. 6)."""
        return self.instance_rewards(images, layouts).sum(dim=1)
