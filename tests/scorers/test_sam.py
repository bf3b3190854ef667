"""SamSegmenter on a tiny random SamModel saved and loaded like a real checkpoint.

Random weights test plumbing only: box scaling, the best-of-three choice, post-processing to
the image size, batching and padding of box lists, loading and its errors.
"""

import json
import re
import shutil

import numpy as np
import pytest
import torch

from idruid.boxes import to_pixels
from idruid.cli import main
from idruid.scorers.analytic import AnalyticSegmenter
from idruid.scorers.registry import check_model_dir, load_scorer
from idruid.scorers.sam import SamSegmenter

HEIGHT, WIDTH = 40, 50
BOXES = [
    np.array([[0.1, 0.1, 0.5, 0.6], [0.2, 0.3, 0.9, 0.9], [0.0, 0.0, 1.0, 1.0]]),
    np.zeros((0, 4)),
    np.array([[0.55, 0.05, 0.95, 0.45]]),
    np.array([[0.3, 0.3, 0.7, 0.7], [0.05, 0.5, 0.4, 0.95]]),
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def segmenter(sam_dir) -> SamSegmenter:
    return SamSegmenter.from_pretrained(sam_dir)


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, HEIGHT, WIDTH, 3), dtype=np.uint8)


def _naive_masks(segmenter: SamSegmenter, image: np.ndarray, boxes: np.ndarray) -> tuple[list, list]:
    """Per box, on its own: the processor and model on one image and one pixel box (scaled by
    hand), all three masks post-processed, the best picked by a Python max over the scores."""
    masks, picks = [], []
    for x0, y0, x1, y1 in boxes.tolist():
        box = [x0 * WIDTH, y0 * HEIGHT, x1 * WIDTH, y1 * HEIGHT]
        inputs = segmenter.processor(images=[image], input_boxes=[[box]], return_tensors="pt")
        with torch.no_grad():
            outputs = segmenter.model(**inputs, multimask_output=True)
        scores = outputs.iou_scores[0, 0].tolist()
        best = max(range(len(scores)), key=lambda k: scores[k])
        (full,) = segmenter.processor.post_process_masks(
            [outputs.pred_masks[0]], inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )  # (1, 3, H, W)
        masks.append(full[0, best].numpy())
        picks.append(best)
    return masks, picks


def test_one_bool_mask_per_box_at_image_size(segmenter):
    masks = segmenter.segment(_images(len(BOXES)), BOXES)
    assert len(masks) == len(BOXES)
    for mask, boxes in zip(masks, BOXES, strict=True):
        assert mask.dtype == np.bool_ and mask.shape == (len(boxes), HEIGHT, WIDTH)
    everything = np.concatenate([m.reshape(-1) for m in masks])
    assert 0 < everything.mean() < 1  # not all empty, not all full: the checks above see real masks


def test_masks_match_one_box_at_a_time(segmenter):
    images = _images(len(BOXES), seed=1)
    masks = segmenter.segment(images, BOXES)
    picks = []
    for image, boxes, got in zip(images, BOXES, masks, strict=True):
        expected, image_picks = _naive_masks(segmenter, image, boxes)
        picks += image_picks
        for want, have in zip(expected, got, strict=True):
            # batched and single forwards may round differently at a few pixels near 0
            assert np.count_nonzero(want != have) <= 0.005 * want.size
    assert len(set(picks)) > 1  # the best-of-three choice is exercised, not always mask 0


def test_batch_size_and_padding_do_not_change_masks(sam_dir, segmenter):
    images = _images(len(BOXES), seed=2)
    together = segmenter.segment(images, BOXES)
    one_by_one = SamSegmenter.from_pretrained(sam_dir, batch_size=1).segment(images, BOXES)
    for a, b in zip(together, one_by_one, strict=True):
        assert a.shape == b.shape and np.count_nonzero(a != b) <= 0.005 * a.size


def test_no_boxes_gives_empty_masks(segmenter):
    masks = segmenter.segment(_images(2), [np.zeros((0, 4)), np.zeros((0, 4))])
    assert [m.shape for m in masks] == [(0, HEIGHT, WIDTH)] * 2


def test_pixel_boxes_scale_x_by_width_and_y_by_height():
    np.testing.assert_allclose(to_pixels(np.array([[0.1, 0.2, 0.5, 1.0]]), 40, 50), [[5, 8, 25, 40]])


def test_bad_input_is_refused(segmenter):
    with pytest.raises(ValueError, match="uint8"):
        segmenter.segment(_images(1).astype(np.float32), BOXES[:1])
    with pytest.raises(ValueError, match="2 images but 1 box lists"):
        segmenter.segment(_images(2), BOXES[:1])


def test_load_segmenter_by_name_or_directory(sam_dir):
    assert isinstance(load_scorer("segmenter", "analytic"), AnalyticSegmenter)
    assert isinstance(load_scorer("segmenter", str(sam_dir)), SamSegmenter)
    with pytest.raises(FileNotFoundError, match=r"--segmenter nope: unknown segmenter.*analytic"):
        load_scorer("segmenter", "nope")


def test_missing_or_wrong_directory_names_path_and_flag(sam_dir, tmp_path):
    missing = tmp_path / "absent"
    with pytest.raises(FileNotFoundError, match=f"--segmenter {re.escape(str(missing))}.*no such directory"):
        check_model_dir("segmenter", missing)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(sam_dir, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(FileNotFoundError, match=f"--segmenter {re.escape(str(no_weights))}.*lacks weights"):
        SamSegmenter.from_pretrained(no_weights)
    other_model = tmp_path / "grounding_dino"
    shutil.copytree(sam_dir, other_model)
    (other_model / "config.json").write_text(json.dumps({"model_type": "grounding-dino"}))
    with pytest.raises(FileNotFoundError, match="model type 'grounding-dino', not 'sam'"):
        SamSegmenter.from_pretrained(other_model)


def test_cli_names_the_bad_segmenter_in_one_line(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    missing = tmp_path / "no_sam"
    args = ["score", "--benchmark", "shapes-mig", "--images", str(images), "--segmenter", str(missing)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("idruid: error: --segmenter") and str(missing) in err and "\n" not in err
