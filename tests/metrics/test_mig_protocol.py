"""COCO-MIG's two scoring protocols (benchmarks.MIG_PROTOCOLS): MIG_Bench's (512 px, SAM, the
default) and the I-DRUID authors' (images at their own size, SAM-HQ on the ground-truth box)."""

import numpy as np
import pytest
from PIL import Image
from tiny_models import build_tiny_sam, build_tiny_sam_hq
from transformers import SamHQModel

from idruid.eval_benchmarks import BENCHMARKS, ScoringError, check_scorers
from idruid.layout import Instance, Layout
from idruid.scorers.sam import SamSegmenter, sam_model_type
from idruid.scoring import FolderImages, Scorers, load_images, score_benchmark

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sam_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sam")
    return {"sam": build_tiny_sam(root / "sam"), "sam_hq": build_tiny_sam_hq(root / "sam_hq")}


def test_resize_per_protocol(tmp_path):
    assert BENCHMARKS["coco-mig"].resize() == 512 and BENCHMARKS["coco-mig"].resize("druid") is None
    assert BENCHMARKS["shapes-mig"].resize("mig-bench") is None
    with pytest.raises(ScoringError, match="--mig-protocol paper"):
        BENCHMARKS["coco-mig"].resize("paper")
    paths = []
    for k in range(2):
        paths.append(tmp_path / f"sys_{k}.png")
        Image.fromarray(np.full((96, 96, 3), 40 * k, np.uint8)).save(paths[-1])
    assert load_images(paths, BENCHMARKS["coco-mig"].resize()).shape == (2, 512, 512, 3)
    assert load_images(paths, BENCHMARKS["coco-mig"].resize("druid")).shape == (2, 96, 96, 3)
    assert FolderImages(paths, BENCHMARKS["coco-mig"].resize("druid"))[1].shape == (96, 96, 3)


class Recorder:
    """A detector and segmenter that find every box and remember the image sizes they saw."""

    def __init__(self):
        self.sizes = []

    def detect(self, images, captions):
        from idruid.scorers.protocols import Detections

        self.sizes.append(images.shape[1:3])
        return [[Detections(np.zeros((0, 4)), np.zeros(0)) for _ in names] for names in captions]

    def segment(self, images, boxes):
        return [np.zeros((len(b), *images.shape[1:3]), bool) for b in boxes]


@pytest.mark.parametrize(("protocol", "side"), [("mig-bench", 512), ("druid", 64)])
def test_scorers_see_the_protocols_size(protocol, side):
    layouts = [Layout("a red cup", (Instance("a red cup", (0.1, 0.1, 0.5, 0.5)),))]
    recorder = Recorder()
    scorers = Scorers(recorder, recorder, None, protocol)
    score_benchmark(BENCHMARKS["coco-mig"], np.zeros((1, 64, 64, 3), np.uint8), layouts, scorers)
    assert recorder.sizes == [(side, side)]


def test_sam_hq_segments_like_sam(sam_dirs):
    assert sam_model_type(sam_dirs["sam_hq"]) == "sam_hq" and sam_model_type(sam_dirs["sam"]) == "sam"
    segmenter = SamSegmenter.from_pretrained(sam_dirs["sam_hq"])
    assert isinstance(segmenter.model, SamHQModel)
    images = np.random.default_rng(0).integers(0, 255, (2, 48, 40, 3), dtype=np.uint8)
    masks = segmenter.segment(images, [np.array([[0.1, 0.1, 0.6, 0.7]]), np.zeros((0, 4))])
    assert masks[0].shape == (1, 48, 40) and masks[0].dtype == bool and masks[1].shape == (0, 48, 40)


def test_the_druid_protocol_needs_sam_hq(sam_dirs):
    with pytest.raises(ScoringError, match="segments with SAM-HQ, this is 'sam'"):
        check_scorers(BENCHMARKS["coco-mig"], "analytic", str(sam_dirs["sam"]), mig_protocol="druid")
    specs = check_scorers(BENCHMARKS["coco-mig"], "analytic", str(sam_dirs["sam_hq"]), mig_protocol="druid")
    assert specs.segmenter == str(sam_dirs["sam_hq"])
