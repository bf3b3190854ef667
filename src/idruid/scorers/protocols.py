"""What scores a layout's image: the detector, segmenter and judge protocols (paper 3.3, 4.1).

The paper scores layouts with GroundingDINO (the RL reward, section 3.3, and COCO-MIG's
position check), SAM (COCO-MIG's colour check) and a VLM judge (LayoutSAM-eval's spatial,
colour, texture and shape questions). These are those models' interfaces; idruid.scorers.analytic
implements them for the shapes world, grounding_dino, sam and vlm_judge wrap the real models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Detections:
    boxes: np.ndarray  # (k, 4) float32 normalised xyxy, best first
    scores: np.ndarray  # (k,) float32 in [0, 1], descending

    @property
    def best(self) -> tuple[np.ndarray, float]:
        """The top box and its score; zeros and 0.0 when nothing was detected."""
        if len(self.scores) == 0:
            return np.zeros(4, dtype=np.float32), 0.0
        return self.boxes[0], float(self.scores[0])


class Detector(Protocol):
    def detect(self, images: np.ndarray, captions: Sequence[Sequence[str]]) -> list[list[Detections]]:
        """images (B, H, W, 3) uint8; captions[b] the queries for image b -> detections[b][query]."""
        ...


class Segmenter(Protocol):
    def segment(self, images: np.ndarray, boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """images (B, H, W, 3) uint8; boxes[b] (n, 4) normalised -> masks[b] (n, H, W) bool."""
        ...


@dataclass(frozen=True)
class RegionJudgement:
    spatial: bool
    color: bool
    texture: bool
    shape: bool


class Judge(Protocol):
    def judge(
        self,
        images: np.ndarray,
        boxes: Sequence[np.ndarray],
        captions: Sequence[Sequence[str]],
        subjects: Sequence[Sequence[str]] | None = None,
    ) -> list[list[RegionJudgement]]:
        """images (B, H, W, 3) uint8; boxes[b] (n, 4), captions[b] (n) the detailed captions and
        subjects[b] (n) the short ones naming each box's subject (None: the captions) -> one
        verdict per box."""
        ...
