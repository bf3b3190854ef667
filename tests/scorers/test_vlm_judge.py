"""The LayoutSAM-eval VLM judge: crops, questions, the spatial gate, and the yes/no reading on a tiny
random Llava saved and loaded like a real checkpoint.

Random weights test plumbing only: prompts, padding, batching, logit reading and loading.
"""

import re
import shutil

import numpy as np
import pytest
import torch
from tiny_models import build_tiny_llava, judge_words, llava_processor, llava_tokenizer

from idruid.boxes import pixel_masks, pixel_windows
from idruid.metrics import aggregate_sam
from idruid.scorers.analytic import AnalyticJudge
from idruid.scorers.protocols import RegionJudgement
from idruid.scorers.registry import load_scorer
from idruid.scorers.vlm_judge import (
    ATTRIBUTES,
    VlmJudge,
    answer_token_id,
    attribute_question,
    box_crops_pixels,
    judge_regions,
    spatial_question,
)

CAPTIONS = ["a red circle", "a striped blue square", "a green triangle", "a dotted yellow circle"]


def _by_hand(question: str) -> str:
    """Llava-1.5's turn format (tiny_models.LLAVA_TEMPLATE), written out by hand."""
    return f"USER: <image>\n{question} ASSISTANT:"


def _words() -> list[str]:
    return judge_words(CAPTIONS)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A directory written by model.save_pretrained + processor.save_pretrained."""
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), CAPTIONS)


@pytest.fixture(scope="module")
def judge(checkpoint) -> VlmJudge:
    return VlmJudge.from_pretrained(checkpoint, batch_size=3)


def _images(count: int, seed: int, height: int = 32, width: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def _direct_margin(judge: VlmJudge, crop: np.ndarray, question: str) -> float:
    """logit(Yes) - logit(No) at the last position of one unpadded prompt formatted by hand, full
    logits, ids looked up in the vocabulary itself."""
    from PIL import Image

    vocab = judge.processor.tokenizer.get_vocab()
    inputs = judge.processor(images=[Image.fromarray(crop)], text=[_by_hand(question)], return_tensors="pt")
    with torch.no_grad():
        logits = judge.model(**inputs).logits[0, -1]
    return float(logits[vocab["Yes"]] - logits[vocab["No"]])


# ----------------------------------------------------------------------------- crops


def test_crops_by_hand():
    height, width = 4, 8
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([rows, cols, rows * 10 + cols], axis=-1).astype(np.uint8)  # (4, 8, 3)
    boxes = np.array(
        [
            [0.0, 0.0, 0.5, 0.5],  # rows 0-1, cols 0-3
            [0.3, 0.1, 0.62, 0.9],  # centres 0.3125..0.5625 in x -> cols 2-4; all 4 rows
            [0.51, 0.26, 0.52, 0.27],  # holds no pixel centre: the pixel under (0.515, 0.265) = (4.12, 1.06)
            [0.99, 0.99, 1.0, 1.0],  # the bottom-right pixel
            [0.0, 0.4, 1.0, 0.55],  # full width, no row centre (0.375, 0.625) inside: row 1 (1.9)
        ]
    )
    expected_windows = [[0, 2, 0, 4], [0, 4, 2, 5], [1, 2, 4, 5], [3, 4, 7, 8], [1, 2, 0, 8]]
    assert pixel_windows(boxes, height, width).tolist() == expected_windows
    crops = box_crops_pixels(image, boxes)
    assert [c.shape for c in crops] == [(2, 4, 3), (4, 3, 3), (1, 1, 3), (1, 1, 3), (1, 8, 3)]
    assert crops[1][:, :, 2].tolist() == [[2, 3, 4], [12, 13, 14], [22, 23, 24], [32, 33, 34]]
    assert crops[2][0, 0].tolist() == [1, 4, 14]
    assert crops[3][0, 0].tolist() == [3, 7, 37]
    assert crops[4][0, :, 1].tolist() == list(range(8))


def test_crops_hold_the_pixels_of_pixel_masks():
    rng = np.random.default_rng(0)
    image = _images(1, seed=1, height=20, width=28)[0]
    corners = rng.uniform(0, 1, (50, 2, 2))
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)  # (50, 4) xyxy
    masks = pixel_masks(boxes, 20, 28)
    # Rows and columns counted alone: the same boxes stretched across the other axis.
    rows = pixel_masks(boxes * [0, 1, 0, 1] + [0, 0, 1, 0], 20, 28).any(axis=2).sum(axis=1)
    cols = pixel_masks(boxes * [1, 0, 1, 0] + [0, 0, 0, 1], 20, 28).any(axis=1).sum(axis=1)
    checked = 0
    for crop, mask, h, w in zip(box_crops_pixels(image, boxes), masks, rows, cols, strict=True):
        assert crop.shape == (max(h, 1), max(w, 1), 3)
        if mask.any():
            np.testing.assert_array_equal(crop, image[mask].reshape(h, w, 3))
            checked += 1
    assert checked > 30


# ----------------------------------------------------------------------------- questions


@pytest.mark.parametrize("caption", CAPTIONS)
def test_questions_hold_the_caption(caption):
    assert f'"{caption}"' in spatial_question(caption)
    assert '"Yes" or "No"' in spatial_question(caption)
    for attribute in ATTRIBUTES:
        question = attribute_question(attribute, "the subject", caption)
        assert f'"{caption}"' in question and '"the subject"' in question
        assert f"the {attribute} of" in question and f"mention its {attribute}" in question
    with pytest.raises(ValueError, match="'size'"):
        attribute_question("size", caption, caption)


def test_prompt_uses_the_chat_template(judge):
    assert judge.prompt("Is it red?") == _by_hand("Is it red?")


# ----------------------------------------------------------------------------- yes / no reading


def test_yes_margins_match_a_direct_computation(judge):
    """Batches of 3 (so 7 prompts take 3 forwards), prompts of different lengths (so rows are
    padded) and crops of different sizes, against one unpadded forward per prompt."""
    images = _images(2, seed=3)
    boxes = np.array(
        [[0.0, 0.0, 0.5, 0.5], [0.2, 0.3, 0.9, 0.6], [0.1, 0.1, 0.12, 0.8], [0.5, 0.5, 1.0, 1.0]]
    )
    crops = box_crops_pixels(images[0], boxes) + box_crops_pixels(images[1], boxes[:3])
    questions = [spatial_question(c) for c in CAPTIONS] + [
        attribute_question(a, CAPTIONS[1], CAPTIONS[1]) for a in ATTRIBUTES
    ]
    margins = judge.yes_margins(crops, questions)
    expected = np.array([_direct_margin(judge, c, q) for c, q in zip(crops, questions, strict=True)])
    assert margins.shape == (7,) and margins.dtype == np.float32
    np.testing.assert_allclose(margins, expected, rtol=1e-4, atol=1e-4)
    assert (expected > 0).any() and (expected < 0).any()  # both answers occur: the test can tell them apart
    np.testing.assert_array_equal(judge.answers(crops, questions), expected > 0)


def test_judge_follows_the_protocol_on_the_real_model(judge):
    images = _images(3, seed=5)
    boxes = [
        np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.6], [0.1, 0.5, 0.7, 1.0]]),
        np.zeros((0, 4)),
        np.array([[0.2, 0.2, 0.8, 0.8], [0.6, 0.6, 0.95, 0.9]]),
    ]
    captions = [CAPTIONS[:3], [], [CAPTIONS[3], CAPTIONS[0]]]
    got = judge.judge(images, boxes, captions)
    assert [len(r) for r in got] == [3, 0, 2]
    verdicts = []
    for image, image_boxes, image_captions, row in zip(images, boxes, captions, got, strict=True):
        for crop, caption, verdict in zip(
            box_crops_pixels(image, image_boxes), image_captions, row, strict=True
        ):
            spatial = _direct_margin(judge, crop, spatial_question(caption)) > 0
            attributes = [
                spatial and _direct_margin(judge, crop, attribute_question(a, caption, caption)) > 0
                for a in ATTRIBUTES
            ]
            assert verdict == RegionJudgement(spatial, *attributes)
            verdicts.append(verdict)
    spatial = [v.spatial for v in verdicts]
    assert any(spatial) and not all(spatial)  # both branches of the gate ran


# ----------------------------------------------------------------------------- the spatial gate


def test_attributes_are_asked_only_when_the_subject_is_present():
    present = {"a red circle": True, "a green triangle": False, "a dotted yellow circle": True}
    # Which attribute questions get "Yes", by (caption, attribute).
    agree = {("a red circle", "color"), ("a red circle", "shape"), ("a dotted yellow circle", "texture")}
    asked: list[list[tuple[int, str]]] = []

    def ask(crops, questions):
        asked.append([(int(c[0, 0, 0]), q) for c, q in zip(crops, questions, strict=True)])
        out = []
        for question in questions:
            caption = re.findall(r'"([^"]*)"', question)[0]
            if question == spatial_question(caption):
                out.append(present[caption])
            else:
                attribute = next(a for a in ATTRIBUTES if question == attribute_question(a, caption, caption))
                out.append((caption, attribute) in agree)
        return np.array(out)

    crops = [np.full((2, 3, 3), k, dtype=np.uint8) for k in range(3)]
    verdicts = judge_regions(crops, list(present), ask)
    assert verdicts == [
        RegionJudgement(True, True, False, True),
        RegionJudgement(False, False, False, False),
        RegionJudgement(True, False, True, False),
    ]
    assert len(asked) == 2  # one batch of spatial questions, one of attribute questions
    assert [k for k, _ in asked[0]] == [0, 1, 2]
    assert [k for k, _ in asked[1]] == [0, 0, 0, 2, 2, 2]  # box 1 failed: never asked about attributes
    assert all("Does the" in q for _, q in asked[1])


def test_a_gate_that_fails_everything_asks_one_batch():
    calls = []

    def ask(crops, questions):
        calls.append(len(questions))
        return np.zeros(len(questions), dtype=bool)

    crops = [np.zeros((1, 1, 3), dtype=np.uint8)] * 4
    verdicts = judge_regions(crops, CAPTIONS, ask)
    assert calls == [4]
    assert verdicts == [RegionJudgement(False, False, False, False)] * 4


def test_aggregate_sam_micro_averages_the_verdicts():
    t, f = True, False
    judgements = [
        [RegionJudgement(t, t, f, t), RegionJudgement(f, f, f, f)],  # level 2
        [RegionJudgement(t, f, t, t), RegionJudgement(t, t, t, f), RegionJudgement(f, f, f, f)],  # level 3
        [RegionJudgement(t, t, t, t), RegionJudgement(t, f, f, f)],  # level 2
    ]
    metrics = aggregate_sam(judgements, levels=[2, 3, 2])
    # 7 boxes: spatial 5, colour 3, texture 3, shape 3 "yes".
    for attribute, value in {"spatial": 5 / 7, "color": 3 / 7, "texture": 3 / 7, "shape": 3 / 7}.items():
        assert metrics["all"][attribute] == pytest.approx(value)
    assert metrics["all"]["instances"] == 7 and metrics["all"]["images"] == 3
    level2 = {"spatial": 3 / 4, "color": 2 / 4, "texture": 1 / 4, "shape": 2 / 4}
    level3 = {"spatial": 2 / 3, "color": 1 / 3, "texture": 2 / 3, "shape": 1 / 3}
    for attribute in level2:
        assert metrics["avg"][attribute] == pytest.approx((level2[attribute] + level3[attribute]) / 2)


# ----------------------------------------------------------------------------- loading and errors


def test_load_judge_picks_registry_or_directory(checkpoint, tmp_path):
    assert isinstance(load_scorer("judge", "analytic"), AnalyticJudge)
    loaded = load_scorer("judge", str(checkpoint))
    assert isinstance(loaded, VlmJudge) and loaded.batch_size == 16
    vocab = loaded.processor.tokenizer.get_vocab()
    assert (loaded.yes_id, loaded.no_id) == (vocab["Yes"], vocab["No"])
    missing = tmp_path / "no_such_vlm"
    with pytest.raises(
        FileNotFoundError, match=rf"--judge {re.escape(str(missing))}: unknown judge and no such.*analytic"
    ):
        load_scorer("judge", str(missing))
    with pytest.raises(FileNotFoundError, match=r"lacks config.json"):
        load_scorer("judge", str(tmp_path))


def test_a_processor_without_chat_template_is_refused(checkpoint, tmp_path):
    copy = tmp_path / "no_template"
    shutil.copytree(checkpoint, copy)
    (copy / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match=rf"{re.escape(str(copy))}: the processor has no chat template"):
        VlmJudge.from_pretrained(copy)


def test_answer_words_must_be_single_known_tokens(judge):
    without_yes = llava_processor(llava_tokenizer([w for w in _words() if w != "Yes"]))
    with pytest.raises(ValueError, match=r"no single token for 'Yes'"):
        VlmJudge(judge.model, without_yes)
    assert answer_token_id(judge.processor.tokenizer, "No") == judge.processor.tokenizer.get_vocab()["No"]
    with pytest.raises(ValueError, match=r"no single token for 'Yes No'"):
        answer_token_id(judge.processor.tokenizer, "Yes No")


def test_bad_batches_are_refused(judge):
    images = _images(2, seed=7)
    boxes = [np.array([[0.0, 0.0, 0.5, 0.5]]), np.array([[0.0, 0.0, 0.5, 0.5]])]
    with pytest.raises(ValueError, match=r"image 1: 1 boxes but 2 captions"):
        judge.judge(images, boxes, [["a red circle"], ["a", "b"]])
    with pytest.raises(ValueError, match=r"image 0, box 0: the caption must be a non-empty"):
        judge.judge(images, boxes, [[" "], ["a"]])
    with pytest.raises(ValueError, match=r"2 images, 1 box lists"):
        judge.judge(images, boxes[:1], [["a"]])
    with pytest.raises(ValueError, match=r"uint8"):
        judge.judge(images.astype(np.float32), boxes, [["a"], ["b"]])
