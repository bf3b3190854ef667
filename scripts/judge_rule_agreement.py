"""How often LayoutSAM-eval's two answer rules disagree on tiny random judges, and why.

The default rule is CreatiLayout's script's: the judge writes an answer (greedy here) that counts
as "yes" when it holds "Yes" or "yes". The logit rule compares logit("Yes") with logit("No") at
the first answer position. On a tiny random Llava (tests/tiny_models.py, seeds 0-4) this asks
LayoutSAM-eval's four questions about 40 random crops per seed and prints, per seed and overall,
how often each rule says yes, how often they disagree, and how the written answers begin:

    python scripts/judge_rule_agreement.py
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny test models
from tiny_models import build_tiny_llava  # noqa: E402

from idruid.scorers.vlm_judge import (  # noqa: E402
    ATTRIBUTES,
    VlmJudge,
    attribute_question,
    box_crops,
    says_yes,
    spatial_question,
)

DESCRIPTIONS = ["a red circle", "a striped blue square", "a green triangle", "a dotted yellow circle"]
SUBJECTS = ["circle", "square", "triangle", "circle"]


def questions_about_random_crops(seed: int) -> tuple[list[np.ndarray], list[str]]:
    """10 random 32x32 images, 4 random boxes each, the four questions about each box."""
    rng = np.random.default_rng(seed)
    crops, questions = [], []
    for image in rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8):
        corners = rng.uniform(0, 1, (4, 2, 2))
        boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
        for k, crop in enumerate(box_crops(image, boxes)):
            crops += [crop] * (1 + len(ATTRIBUTES))
            questions.append(spatial_question(SUBJECTS[k]))
            questions += [attribute_question(a, SUBJECTS[k], DESCRIPTIONS[k]) for a in ATTRIBUTES]
    return crops, questions


def main() -> None:
    torch.set_num_threads(1)
    pairs: Counter = Counter()
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(5):
            path = build_tiny_llava(Path(folder) / str(seed), DESCRIPTIONS + SUBJECTS, seed=seed)
            judge = VlmJudge.from_pretrained(path, rule="logits")
            crops, questions = questions_about_random_crops(seed)
            by_logits = judge.yes_margins(crops, questions) > 0
            written = judge.written_answers(crops, questions)
            by_text = np.array([says_yes(text) for text in written])
            starts = Counter((text.split() or [""])[0] for text in written)
            pairs.update(zip(by_logits.tolist(), by_text.tolist(), strict=True))
            print(
                f"seed {seed}: {len(questions)} questions; yes by logits {by_logits.mean():.1%}, "
                f"by the written answer {by_text.mean():.1%}; disagree {(by_logits != by_text).mean():.1%}; "
                f"answers starting with Yes {starts['Yes']}, No {starts['No']}, "
                f"a yes further on {sum(says_yes(t) and not t.startswith('Yes') for t in written)}"
            )
    total = sum(pairs.values())
    disagree = pairs[(True, False)] + pairs[(False, True)]
    print(
        f"all: {disagree} of {total} disagree ({disagree / total:.1%}): logits yes / text no "
        f"{pairs[(True, False)]}, logits no / text yes {pairs[(False, True)]}"
    )


if __name__ == "__main__":
    main()
