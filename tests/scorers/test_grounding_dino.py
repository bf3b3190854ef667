"""The GroundingDINO wrapper on a tiny random GroundingDINO saved and loaded like a real checkpoint.

Random weights test plumbing only: prompt, padding, token-span scoring, boxes and loading.
"""

import math
import re
import shutil

import numpy as np
import pytest
import torch
from tiny_models import build_tiny_grounding_dino

from idruid.scorers.analytic import AnalyticDetector
from idruid.scorers.grounding_dino import GroundingDinoDetector, grounding_prompt
from idruid.scorers.protocols import Detections
from idruid.scorers.registry import load_scorer

WORDS = ["a", "red", "blue", "green", "striped", "dotted", "circle", "square", "dog", "cat", "on", "the"]
NUM_QUERIES = 12
MAX_TEXT_LEN = 32
CAPTIONS = [
    ["a red circle", "blue dog", "the striped square on a cat"],
    ["a green square"],
    ["dotted cat", "A Red Dog."],
]


QUARTER_LOGIT = -1.0986123085021973  # the float32 logit whose float32 sigmoid is exactly 0.25


def _images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A directory written by model.save_pretrained + processor.save_pretrained."""
    path = tmp_path_factory.mktemp("grounding_dino")
    return build_tiny_grounding_dino(path, WORDS, NUM_QUERIES, MAX_TEXT_LEN)


@pytest.fixture(scope="module")
def detector(checkpoint) -> GroundingDinoDetector:
    return GroundingDinoDetector.from_pretrained(checkpoint)


def _with_thresholds(detector: GroundingDinoDetector, box: float, text: float) -> GroundingDinoDetector:
    return GroundingDinoDetector(detector.model, detector.processor, "cpu", box, text)


def _assert_same_detections(a: Detections, b: Detections, atol: float) -> None:
    """Equal up to atol, pairing rows by nearest (box, score) so near-ties may swap places."""
    assert a.boxes.shape == b.boxes.shape and a.scores.shape == b.scores.shape
    rows_a = np.concatenate([a.boxes, a.scores[:, None]], axis=1)
    rows_b = np.concatenate([b.boxes, b.scores[:, None]], axis=1)
    distance = np.abs(rows_a[:, None] - rows_b[None]).max(axis=-1)  # (k, k)
    nearest = distance.argmin(axis=1)
    assert sorted(nearest.tolist()) == list(range(len(rows_b)))
    assert distance[np.arange(len(rows_a)), nearest].max(initial=0.0) <= atol


def test_load_detector_picks_registry_or_directory(checkpoint):
    assert isinstance(load_scorer("detector", "analytic"), AnalyticDetector)
    loaded = load_scorer("detector", str(checkpoint))
    assert isinstance(loaded, GroundingDinoDetector)
    assert (loaded.box_threshold, loaded.text_threshold) == (0.25, 0.25)
    with pytest.raises(FileNotFoundError, match=r"--detector nope: unknown detector.*GroundingDINO"):
        load_scorer("detector", "nope")


def test_output_structure(detector):
    results = detector.detect(_images(3, seed=1), CAPTIONS)
    assert [len(r) for r in results] == [len(c) for c in CAPTIONS]
    counts = []
    for image_results in results:
        for detections in image_results:
            assert isinstance(detections, Detections)
            boxes, scores = detections.boxes, detections.scores
            assert boxes.dtype == np.float32 and scores.dtype == np.float32
            assert boxes.shape == (len(scores), 4) and scores.ndim == 1
            assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
            assert (np.diff(scores) <= 0).all() and (scores > 0.25).all()
            if len(scores):
                assert detections.best[1] == scores[0]
            counts.append(len(scores))
    # The threshold both keeps and drops boxes here, so the checks above are not vacuous.
    assert 0 < sum(counts) < NUM_QUERIES * len(counts)


def test_zero_threshold_keeps_every_query(detector):
    results = _with_thresholds(detector, 0.0, 0.0).detect(_images(3, seed=2), CAPTIONS)
    for image_results in results:
        for detections in image_results:
            assert detections.boxes.shape == (NUM_QUERIES, 4)
            assert (np.diff(detections.scores) <= 0).all()


def _naive_detections(detector, image: np.ndarray, captions: list[str]) -> list[tuple[np.ndarray, ...]]:
    """Per caption, (Q,) scores and (Q, 4) xyxy boxes (not clipped) from the raw model outputs,
    with Python loops over queries and tokens: a lone caption scores over every token of the
    prompt ([CLS] to [SEP], as GroundingDINO does), several over spans laid out from each
    caption's own tokenisation."""
    tokenizer = detector.processor.tokenizer
    prompt = "".join(f"{c.lower().rstrip('.')}. " for c in captions).strip()
    inputs = detector.processor(images=[image], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        outputs = detector.model(**inputs)
    logits, pred_boxes = outputs.logits[0].tolist(), outputs.pred_boxes[0].tolist()
    boxes = [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2] for cx, cy, w, h in pred_boxes]
    if len(captions) == 1:
        length = len(inputs["input_ids"][0])
        scores = [max(1 / (1 + math.exp(-row[t])) for t in range(length)) for row in logits]
        return [(np.array(scores), np.array(boxes))]
    results, start = [], 1  # after [CLS]
    for caption in captions:
        length = len(tokenizer(caption.lower().rstrip("."), add_special_tokens=False)["input_ids"])
        scores = []
        for query_logits in logits:
            scores.append(max(1 / (1 + math.exp(-query_logits[t])) for t in range(start, start + length)))
        results.append((np.array(scores), np.array(boxes)))
        start += length + 1  # the caption's tokens and its "."
    return results


@pytest.mark.parametrize("box_threshold, text_threshold", [(0.0, 0.0), (0.25, 0.25), (0.0, 0.6), (0.6, 0.0)])
@pytest.mark.parametrize("captions", [CAPTIONS[0], ["the striped square on a cat"]])
def test_scores_match_a_naive_loop(detector, box_threshold, text_threshold, captions):
    """Several captions: each over its own tokens, kept above both thresholds (the phrase test);
    one caption: over all the prompt's tokens, kept above box_threshold alone (GroundingDINO's
    predict, whose text threshold only picks the phrase)."""
    image = _images(1, seed=3)[0]
    naive = _naive_detections(detector, image, captions)
    got = _with_thresholds(detector, box_threshold, text_threshold).detect(image[None], [captions])[0]
    threshold = box_threshold if len(captions) == 1 else max(box_threshold, text_threshold)
    kept = 0
    for detections, (scores, boxes) in zip(got, naive, strict=True):
        keep = scores > threshold
        order = np.argsort(-scores[keep], kind="stable")
        expected = Detections(boxes[keep][order].astype(np.float32), scores[keep][order].astype(np.float32))
        _assert_same_detections(detections, expected, atol=1e-6)
        kept += int(keep.sum())
    if threshold > 0:
        assert 0 < kept < NUM_QUERIES * len(captions)


def test_one_caption_scores_by_special_tokens_too_and_keeps_boxes_outside_the_image(detector, monkeypatch):
    """A box whose only token above the threshold is [CLS], '.' or [SEP] is kept with that
    token's probability, as GroundingDINO keeps it; a probability of exactly 0.25 is not kept
    (strictly above); boxes leaving the image keep their corners."""
    model = detector.model
    real_forward = type(model).forward

    def planted(self, **inputs):
        outputs = real_forward(self, **inputs)
        length = int(inputs["attention_mask"][0].sum())  # [CLS] a green square . [SEP]
        logits = torch.full_like(outputs.logits, -9.0)
        logits[0, 0, 0] = 0.5  # [CLS] alone: sigmoid 0.62
        logits[0, 1, length - 2] = 1.0  # '.' alone: 0.73
        logits[0, 2, length - 1] = 0.2  # [SEP] alone: 0.55
        logits[0, 3, 1] = QUARTER_LOGIT  # a word at exactly 0.25: dropped
        outputs.logits = logits
        boxes = torch.full((1, NUM_QUERIES, 4), 0.5)
        boxes[0, :2] = torch.tensor([[0.05, 0.5, 0.2, 0.4], [0.5, 0.95, 0.4, 0.2]])
        outputs.pred_boxes = boxes
        return outputs

    assert torch.tensor(QUARTER_LOGIT).sigmoid().item() == 0.25  # float32, as the model computes it
    monkeypatch.setattr(type(model), "forward", planted)
    (found,) = detector.detect(_images(1, seed=6), [["a green square"]])[0]
    sigmoid = torch.tensor([1.0, 0.5, 0.2]).sigmoid().numpy()
    np.testing.assert_array_equal(found.scores, sigmoid)  # '.', [CLS], [SEP], best first
    np.testing.assert_allclose(found.boxes[1], [-0.05, 0.3, 0.15, 0.7], atol=1e-7)  # [CLS]'s box, unclipped
    np.testing.assert_allclose(found.boxes[0], [0.3, 0.85, 0.7, 1.05], atol=1e-7)


def test_padding_and_batch_do_not_change_results(detector):
    detector = _with_thresholds(detector, 0.0, 0.0)
    images = _images(3, seed=4)
    alone = detector.detect(images[2:], [CAPTIONS[1]])[0]
    batch = detector.detect(images, [CAPTIONS[0], [], CAPTIONS[1]])
    assert batch[1] == []
    assert len(alone) == len(batch[2]) == len(CAPTIONS[1])
    for a, b in zip(alone, batch[2], strict=True):
        _assert_same_detections(a, b, atol=1e-4)


def test_prompt_and_caption_checks(detector):
    assert grounding_prompt(["A Red Circle.", " blue dog "]) == "a red circle. blue dog."
    assert detector.detect(_images(2, seed=5), [[], []]) == [[], []]
    for bad in ["", "a dog. a cat", "a dog?"]:
        with pytest.raises(ValueError, match="caption"):
            detector.detect(_images(1, seed=5), [[bad]])
    with pytest.raises(ValueError, match=f"the model reads {MAX_TEXT_LEN}"):
        detector.detect(_images(1, seed=5), [["the striped square on a cat"] * 6])
    with pytest.raises(ValueError, match="caption lists"):
        detector.detect(_images(2, seed=5), [["a dog"]])


def test_tokenizer_with_other_special_ids_is_refused(detector):
    from transformers import BertTokenizer, GroundingDinoProcessor

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", *WORDS]
    vocab = {token: i for i, token in enumerate(tokens)}
    processor = GroundingDinoProcessor(detector.processor.image_processor, BertTokenizer(vocab=vocab))
    with pytest.raises(ValueError, match="hard-codes"):
        GroundingDinoDetector(detector.model, processor)


def test_missing_directory_and_files(checkpoint, tmp_path):
    missing = tmp_path / "absent"
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(missing))}.*no such directory"):
        GroundingDinoDetector.from_pretrained(missing)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(checkpoint, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(no_weights))}.*weights.*model.safetensors"):
        GroundingDinoDetector.from_pretrained(no_weights)
    no_config = tmp_path / "no_config"
    shutil.copytree(checkpoint, no_config, ignore=shutil.ignore_patterns("config.json"))
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(no_config))}.*config\\.json"):
        load_scorer("detector", str(no_config))
