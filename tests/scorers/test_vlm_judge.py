"""The LayoutSAM-eval VLM judge: crops, questions, the spatial gate, and both ways of reading an
answer (greedy generation searched for "Yes"/"yes", as CreatiLayout's script; the Yes/No logits)
on a tiny random Llava saved and loaded like a real checkpoint.

Random weights test plumbing only: prompts, padding, batching, decoding, logit reading and loading.
"""

import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import build_tiny_llava, judge_words, llava_processor, llava_tokenizer

from idruid.metrics import aggregate_sam
from idruid.scorers.analytic import AnalyticJudge
from idruid.scorers.protocols import RegionJudgement
from idruid.scorers.registry import load_scorer
from idruid.scorers.vlm_judge import (
    ATTRIBUTES,
    VlmJudge,
    answer_token_id,
    attribute_question,
    box_crops,
    judge_regions,
    says_yes,
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


@pytest.fixture(scope="module")
def logit_judge(judge) -> VlmJudge:
    return VlmJudge(judge.model, judge.processor, batch_size=3, rule="logits")


def _images(count: int, seed: int, height: int = 32, width: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def _direct_margin(judge: VlmJudge, crop: np.ndarray, question: str) -> float:
    """logit(Yes) - logit(No) at the last position of one unpadded prompt formatted by hand, full
    logits, ids looked up in the vocabulary itself."""
    vocab = judge.processor.tokenizer.get_vocab()
    inputs = judge.processor(images=[Image.fromarray(crop)], text=[_by_hand(question)], return_tensors="pt")
    with torch.no_grad():
        logits = judge.model(**inputs).logits[0, -1]
    return float(logits[vocab["Yes"]] - logits[vocab["No"]])


def _greedy_by_hand(judge: VlmJudge, crop: np.ndarray, question: str) -> str:
    """Greedy decoding of one unpadded prompt formatted by hand: a full forward per new token (no
    cache), the argmax appended, stopping at the model's end-of-sequence ids or after
    max_new_tokens, decoded without special tokens."""
    inputs = judge.processor(images=[Image.fromarray(crop)], text=[_by_hand(question)], return_tensors="pt")
    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    stop = judge.model.generation_config.eos_token_id
    stop = set(stop if isinstance(stop, list) else [] if stop is None else [stop])
    new = []
    for _ in range(judge.max_new_tokens):
        with torch.no_grad():
            logits = judge.model(input_ids=ids, pixel_values=pixels).logits[0, -1]
        token = int(logits.argmax())
        new.append(token)
        if token in stop:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return judge.processor.tokenizer.decode(new, skip_special_tokens=True)


# ----------------------------------------------------------------------------- crops


def test_crops_are_the_scripts_pil_crops():
    """box_crops against the script's own steps: round(x / side, 3) kept as a float32 tensor,
    int(x * resolution), PIL's Image.crop; boxes thinner than a pixel get the pixel they start at."""
    rng = np.random.default_rng(0)
    image = _images(1, seed=1, height=20, width=28)[0]
    corners = rng.uniform(0, 1, (60, 2, 2))
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)  # (60, 4) xyxy
    boxes[:5, 2] = boxes[:5, 0] + 0.01  # thinner than a pixel of 28
    checked = 0
    for crop, box in zip(box_crops(image, boxes), boxes, strict=True):
        x0, y0, x1, y1 = (torch.tensor(round(float(v), 3), dtype=torch.float32) for v in box)
        window = (int(x0 * 28), int(y0 * 20), int(x1 * 28), int(y1 * 20))
        script = np.asarray(Image.fromarray(image).crop(window))
        if script.shape[0] and script.shape[1]:
            np.testing.assert_array_equal(crop, script)
            checked += 1
        else:  # empty in the script: one pixel wide (or high) here
            assert crop.shape[0] >= 1 and crop.shape[1] >= 1 and min(crop.shape[:2]) == 1
    assert checked > 40


# ----------------------------------------------------------------------------- questions


def test_questions_are_the_scripts_word_for_word():
    assert spatial_question("a red/blue cup") == (
        'Is the subject "a redblue cup" present in the image? '
        'Strictly answer with "Yes" or "No", without any irrelevant words.'
    )
    assert attribute_question("texture", "a cup", "a striped red cup") == (
        'Is the subject in "a cup" in the image consistent with the texture described in the detailed '
        'description: "a striped red cup"? Strictly answer with "Yes" or "No", without any irrelevant '
        'words. If the texture is not mentioned in the detailed description, the answer is "Yes".'
    )
    with pytest.raises(ValueError, match="'size'"):
        attribute_question("size", "a cup", "a cup")


@pytest.mark.parametrize(
    ("answer", "yes"),
    [
        ("Yes", True),
        ("yes.", True),
        ("No", False),
        ("NO", False),
        ("YES", False),
        ("eyes", True),
        ("", False),
    ],
)
def test_a_written_answer_says_yes_where_it_holds_yes(answer, yes):
    """The script's test is a substring test: "YES" is not counted, "eyes" is."""
    assert says_yes(answer) is yes


def test_prompt_uses_the_chat_template(judge):
    assert judge.prompt("Is it red?") == _by_hand("Is it red?")


# ----------------------------------------------------------------------------- yes / no reading


def test_yes_margins_match_a_direct_computation(judge, logit_judge):
    """Batches of 3 (so 7 prompts take 3 forwards), prompts of different lengths (so rows are
    padded) and crops of different sizes, against one unpadded forward per prompt."""
    images = _images(2, seed=3)
    boxes = np.array(
        [[0.0, 0.0, 0.5, 0.5], [0.2, 0.3, 0.9, 0.6], [0.1, 0.1, 0.12, 0.8], [0.5, 0.5, 1.0, 1.0]]
    )
    crops = box_crops(images[0], boxes) + box_crops(images[1], boxes[:3])
    questions = [spatial_question(c) for c in CAPTIONS] + [
        attribute_question(a, CAPTIONS[1], CAPTIONS[1]) for a in ATTRIBUTES
    ]
    margins = judge.yes_margins(crops, questions)
    expected = np.array([_direct_margin(judge, c, q) for c, q in zip(crops, questions, strict=True)])
    assert margins.shape == (7,) and margins.dtype == np.float32
    np.testing.assert_allclose(margins, expected, rtol=1e-4, atol=1e-4)
    assert (expected > 0).any() and (expected < 0).any()  # both answers occur: the test can tell them apart
    np.testing.assert_array_equal(logit_judge.answers(crops, questions), expected > 0)


def test_written_answers_are_greedy_decoding(judge):
    """Batches of 3 left-padded prompts through generate, against one unpadded greedy loop per
    prompt; the default rule reads them as the script does."""
    images = _images(2, seed=3)
    boxes = np.array(
        [[0.0, 0.0, 0.5, 0.5], [0.2, 0.3, 0.9, 0.6], [0.1, 0.1, 0.12, 0.8], [0.5, 0.5, 1.0, 1.0]]
    )
    crops = box_crops(images[0], boxes) + box_crops(images[1], boxes[:3])
    questions = [spatial_question(c) for c in CAPTIONS] + [
        attribute_question(a, CAPTIONS[1], CAPTIONS[1]) for a in ATTRIBUTES
    ]
    written = judge.written_answers(crops, questions)
    expected = [_greedy_by_hand(judge, c, q) for c, q in zip(crops, questions, strict=True)]
    assert written == expected
    assert len(set(expected)) > 1  # answers differ between prompts: the comparison can fail
    assert judge.rule == "generate"
    np.testing.assert_array_equal(judge.answers(crops, questions), [says_yes(t) for t in expected])


@pytest.mark.parametrize("rule", ["generate", "logits"])
def test_judge_follows_the_protocol_on_the_real_model(judge, rule):
    """Each box's verdicts against the questions asked one at a time by hand: the subject (short
    caption) in the spatial question, subject and description in the attribute questions, these
    asked only after a "yes"."""
    judge = VlmJudge(judge.model, judge.processor, batch_size=3, rule=rule)
    images = _images(3, seed=18)  # by the logit rule: two subjects present, three not
    boxes = [
        np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.6], [0.1, 0.5, 0.7, 1.0]]),
        np.zeros((0, 4)),
        np.array([[0.2, 0.2, 0.8, 0.8], [0.6, 0.6, 0.95, 0.9]]),
    ]
    captions = [CAPTIONS[:3], [], [CAPTIONS[3], CAPTIONS[0]]]
    subjects = [["circle", "square", "triangle"], [], ["circle", "red"]]
    got = judge.judge(images, boxes, captions, subjects)
    assert [len(r) for r in got] == [3, 0, 2]

    def yes(crop, question):
        if rule == "logits":
            return _direct_margin(judge, crop, question) > 0
        return says_yes(_greedy_by_hand(judge, crop, question))

    verdicts = []
    for image, image_boxes, image_captions, image_subjects, row in zip(
        images, boxes, captions, subjects, got, strict=True
    ):
        for crop, caption, subject, verdict in zip(
            box_crops(image, image_boxes), image_captions, image_subjects, row, strict=True
        ):
            spatial = yes(crop, spatial_question(subject))
            attributes = [spatial and yes(crop, attribute_question(a, subject, caption)) for a in ATTRIBUTES]
            assert verdict == RegionJudgement(spatial, *attributes)
            verdicts.append(verdict)
    if rule == "logits":
        spatial = [v.spatial for v in verdicts]
        assert any(spatial) and not all(spatial)  # both branches of the gate ran


def test_where_the_two_rules_disagree(judge, logit_judge):
    """An answer whose first word is "Yes" or "No" is the argmax of the whole vocabulary there, so
    the logit rule agrees with it; the rules part only where the model starts with another word
    (a random judge, nearly always: scripts/judge_rule_agreement.py) or says "yes" further on."""
    images = _images(4, seed=9)
    boxes = np.array([[0.0, 0.0, 0.6, 0.5], [0.3, 0.2, 1.0, 0.9], [0.1, 0.4, 0.5, 1.0]])
    crops = [crop for image in images for crop in box_crops(image, boxes) for _ in range(4)]
    questions = [
        q
        for _ in images
        for caption in CAPTIONS[:3]
        for q in [spatial_question(caption), *(attribute_question(a, caption, caption) for a in ATTRIBUTES)]
    ]
    written = judge.written_answers(crops, questions)
    by_logits = logit_judge.answers(crops, questions)
    by_text = judge.answers(crops, questions)
    for text, logit_yes, text_yes in zip(written, by_logits, by_text, strict=True):
        first = (text.split() or [""])[0]
        if first == "Yes":
            assert logit_yes and text_yes
        elif first == "No":
            assert not logit_yes
    assert (by_logits != by_text).any()


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
                attribute = next(
                    a
                    for a in ATTRIBUTES
                    if question == attribute_question(a, caption, f"{caption}, detailed")
                )
                out.append((caption, attribute) in agree)
        return np.array(out)

    crops = [np.full((2, 3, 3), k, dtype=np.uint8) for k in range(3)]
    verdicts = judge_regions(crops, list(present), [f"{c}, detailed" for c in present], ask)
    assert verdicts == [
        RegionJudgement(True, True, False, True),
        RegionJudgement(False, False, False, False),
        RegionJudgement(True, False, True, False),
    ]
    assert len(asked) == 2  # one batch of spatial questions, one of attribute questions
    assert [k for k, _ in asked[0]] == [0, 1, 2]
    assert [k for k, _ in asked[1]] == [0, 0, 0, 2, 2, 2]  # box 1 failed: never asked about attributes
    assert all("consistent with the" in q for _, q in asked[1])


def test_a_gate_that_fails_everything_asks_one_batch():
    calls = []

    def ask(crops, questions):
        calls.append(len(questions))
        return np.zeros(len(questions), dtype=bool)

    crops = [np.zeros((1, 1, 3), dtype=np.uint8)] * 4
    verdicts = judge_regions(crops, CAPTIONS, CAPTIONS, ask)
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
    assert isinstance(loaded, VlmJudge) and loaded.batch_size == 16 and loaded.rule == "generate"
    vocab = loaded.processor.tokenizer.get_vocab()
    assert loaded.answer_ids == (vocab["Yes"], vocab["No"])
    assert load_scorer("judge", str(checkpoint), rule="logits").rule == "logits"
    with pytest.raises(ValueError, match="judge rule 'vote'"):
        load_scorer("judge", str(checkpoint), rule="vote")
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
        VlmJudge(judge.model, without_yes, rule="logits")
    assert VlmJudge(judge.model, without_yes).rule == "generate"  # reads written text: needs no such token
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
