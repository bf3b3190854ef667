"""Evaluation metrics of the paper's section 4.1 (Tables 1-3).

- Greedy NMS (torchvision's rule); IoU and box pixels are idruid.boxes.
- COCO-MIG (Table 1): per-instance position and colour checks of MIG_Bench's ``eval_mig.py``,
  its arithmetic included (tests/metrics/test_coco_mig_parity.py), aggregated into instance
  success rate (ISR) and mIoU per level L2-L6 and two averages: over all instances (what
  eval_mig.py prints) and the mean of the levels (the I-DRUID paper's "Avg").
- Attribute leakage: the failure I-DRUID targets (section 1, 4.3): an instance box painted
  mostly in a colour that another instance of the same layout asked for.
- LayoutSAM-eval (Table 2): spatial / colour / texture / shape judgements, micro-averaged.

Boxes are normalised ``[x0, y0, x1, y1]`` throughout; IoU does not depend on the image size.
Rates are fractions in [0, 1]; the tables print percentages.

checks.py holds the per-instance checks and levels.py their aggregation by level; this package
re-exports their public names. The Markdown tables of these metrics are reports.tables.
"""

from .checks import (
    InstanceScore,
    caption_color,
    leak_flags,
    mask_color_fraction,
    nms,
    object_name,
    resize_linear,
    score_coco_mig,
    score_layoutsam,
)
from .levels import SAM_ATTRIBUTES, aggregate_mig, aggregate_sam, leakage

__all__ = [
    "SAM_ATTRIBUTES",
    "InstanceScore",
    "aggregate_mig",
    "aggregate_sam",
    "caption_color",
    "leak_flags",
    "leakage",
    "mask_color_fraction",
    "nms",
    "object_name",
    "resize_linear",
    "score_coco_mig",
    "score_layoutsam",
]
