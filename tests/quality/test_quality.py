"""Image-quality metrics: FID math against scipy and hand-worked cases, IS against a naive loop,
the CLIP score against the model's own feature functions, and the model wrappers on tiny random
transformers models written with save_pretrained (random weights test plumbing, not quality)."""

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from idruid.quality import (
    Classifier,
    ClipScorer,
    FeatureExtractor,
    QualityError,
    clip_scores,
    feature_statistics,
    frechet_distance,
    image_quality,
    inception_score,
    load_image_dir,
    load_prompts,
    split_bounds,
    trace_sqrt_product,
)

SIZE = 32  # test images are SIZE x SIZE, so the processors' resize and crop are the identity


def _images(count: int, seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def _spd(dim: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def _scipy_trace_sqrt(s1: np.ndarray, s2: np.ndarray) -> float:
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.real(np.trace(root)))


# ----------------------------------------------------------------------------- FID math


def test_feature_statistics_hand_worked():
    features = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    mu, sigma = feature_statistics(features)
    np.testing.assert_allclose(mu, [1.0, 1.0])
    # unbiased: sum of squared deviations 4 * 1 over N - 1 = 3; the two axes are uncorrelated
    np.testing.assert_allclose(sigma, [[4 / 3, 0.0], [0.0, 4 / 3]])
    mu1, sigma1 = feature_statistics(np.array([[1.0], [3.0], [8.0]]))
    assert mu1.shape == (1,) and sigma1.shape == (1, 1)
    np.testing.assert_allclose(sigma1, [[((1 - 4) ** 2 + (3 - 4) ** 2 + (8 - 4) ** 2) / 2]])


def test_feature_statistics_rejects_too_few_samples_and_bad_shapes():
    with pytest.raises(QualityError, match="at least 2"):
        feature_statistics(np.ones((1, 5)))
    with pytest.raises(QualityError, match=r"\(N, D\)"):
        feature_statistics(np.ones(5))
    with pytest.raises(QualityError, match="NaN"):
        feature_statistics(np.array([[0.0, np.nan], [1.0, 1.0]]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trace_sqrt_product_matches_scipy_sqrtm(seed):
    rng = np.random.default_rng(seed)
    s1, s2 = _spd(6, rng), _spd(6, rng)
    assert trace_sqrt_product(s1, s2) == pytest.approx(_scipy_trace_sqrt(s1, s2), rel=1e-9)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_one_dimensional():
    # N(m1, s1^2) to N(m2, s2^2): (m1 - m2)^2 + s1^2 + s2^2 - 2 s1 s2 = (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    assert frechet_distance(np.array([0.5]), np.array([[0.25]]), np.array([0.5]), np.array([[1.0]])) == (
        pytest.approx(0.25)
    )


def test_frechet_distance_diagonal():
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1.0 + 4.0 + (1 - 2) ** 2 + (2 - 2) ** 2 + (3 - 1) ** 2
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)


def test_frechet_distance_symmetric_zero_for_identical_and_rotation_invariant():
    rng = np.random.default_rng(3)
    s1, s2 = _spd(5, rng), _spd(5, rng)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    d12 = frechet_distance(mu1, s1, mu2, s2)
    assert d12 > 0.1
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(d12, rel=1e-10)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))  # an orthogonal change of feature basis
    assert frechet_distance(q @ mu1, q @ s1 @ q.T, q @ mu2, q @ s2 @ q.T) == pytest.approx(d12, rel=1e-9)


def test_frechet_distance_rank_deficient():
    rng = np.random.default_rng(4)
    # S1 = u u^T (rank 1): S1 S2 = u (u^T S2) has the single non-zero eigenvalue u^T S2 u.
    u = rng.normal(size=4)
    s1, s2 = np.outer(u, u), _spd(4, rng)
    assert trace_sqrt_product(s1, s2) == pytest.approx(math.sqrt(u @ s2 @ u), rel=1e-9)
    assert trace_sqrt_product(s2, s1) == pytest.approx(math.sqrt(u @ s2 @ u), rel=1e-9)
    # Hand-worked: diag(4, 0) and diag(9, 5): Tr sqrt = sqrt(36) = 6, distance 4 + 14 - 12 = 6.
    zero = np.zeros(2)
    assert frechet_distance(zero, np.diag([4.0, 0.0]), zero, np.diag([9.0, 5.0])) == pytest.approx(6.0)
    # Fewer samples than dimensions, as with few images: both covariances have rank 3 of 8. The limit
    # of the eps-regularised scipy computation (eps -> 0) is the exact value.
    f1, f2 = rng.normal(size=(4, 8)), rng.normal(size=(4, 8)) + 0.5
    (mu1, sig1), (mu2, sig2) = feature_statistics(f1), feature_statistics(f2)
    assert np.linalg.matrix_rank(sig1) == 3
    eps = 1e-10 * np.eye(8)
    regularised = (
        np.sum((mu1 - mu2) ** 2) + np.trace(sig1 + sig2) - 2 * _scipy_trace_sqrt(sig1 + eps, sig2 + eps)
    )
    assert frechet_distance(mu1, sig1, mu2, sig2) == pytest.approx(regularised, abs=1e-3)
    assert frechet_distance(mu1, sig1, mu1, sig1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_rejects_bad_statistics():
    with pytest.raises(QualityError, match="mu1 and mu2"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(QualityError, match="sigma2 must be"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))
    with pytest.raises(QualityError, match="sigma1 is not symmetric"):
        frechet_distance(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    with pytest.raises(QualityError, match="sigma1 has eigenvalue"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(QualityError, match="sigma2 is not PSD"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, -1.0]))


# ----------------------------------------------------------------------------- IS and CLIP math


def _naive_inception_score(probs: np.ndarray, chunks: list[tuple[int, int]]) -> tuple[float, float]:
    scores = []
    for start, end in chunks:
        rows = [list(map(float, probs[i])) for i in range(start, end)]
        num_classes = len(rows[0])
        marginal = [sum(row[c] for row in rows) / len(rows) for c in range(num_classes)]
        total = 0.0
        for row in rows:
            total += sum(p * math.log(p / marginal[c]) for c, p in enumerate(row) if p > 0)
        scores.append(math.exp(total / len(rows)))
    mean = sum(scores) / len(scores)
    return mean, math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))


def test_split_bounds_follow_the_original_code():
    assert split_bounds(10, 2) == [(0, 5), (5, 10)]
    assert split_bounds(5, 2) == [(0, 2), (2, 5)]
    assert split_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]


@pytest.mark.parametrize("count,splits", [(12, 1), (12, 3), (10, 3)])
def test_inception_score_matches_naive_loop(count, splits):
    rng = np.random.default_rng(count + splits)
    probs = rng.dirichlet(np.full(5, 0.3), size=count)
    probs[0] = [0.0, 0.0, 1.0, 0.0, 0.0]  # exact zeros: 0 log 0 = 0
    chunks = {(10, 3): [(0, 3), (3, 6), (6, 10)], (12, 3): [(0, 4), (4, 8), (8, 12)], (12, 1): [(0, 12)]}
    mean, std = inception_score(probs, splits)
    naive_mean, naive_std = _naive_inception_score(probs, chunks[(count, splits)])
    assert mean == pytest.approx(naive_mean, rel=1e-10)
    assert std == pytest.approx(naive_std, rel=1e-8, abs=1e-12)
    assert 1.0 <= mean <= 5.0


def test_inception_score_bounds():
    # The same prediction for every image: p(y|x) = p(y), KL = 0, score 1.
    same = np.tile([0.2, 0.5, 0.3], (8, 1))
    assert inception_score(same, splits=2) == (pytest.approx(1.0), pytest.approx(0.0))
    # One-hot and distinct: KL = log C for every image, the upper bound C.
    one_hot = np.eye(4)
    assert inception_score(one_hot, splits=1) == (pytest.approx(4.0), 0.0)
    # Two chunks, each with every class once: both score 4, std 0.
    assert inception_score(np.concatenate([one_hot, one_hot[::-1]]), splits=2) == (
        pytest.approx(4.0),
        pytest.approx(0.0),
    )
    # Two chunks of two classes each: both score 2 (only two classes seen per chunk).
    assert inception_score(one_hot, splits=2)[0] == pytest.approx(2.0)


def test_inception_score_rejects_bad_input():
    with pytest.raises(QualityError, match="row 1 sums to"):
        inception_score(np.array([[0.5, 0.5], [0.5, 0.6]]), splits=1)
    with pytest.raises(QualityError, match="splits"):
        inception_score(np.eye(3), splits=4)
    with pytest.raises(QualityError, match="non-negative"):
        inception_score(np.array([[1.5, -0.5]]), splits=1)


def test_clip_scores_hand_worked():
    image = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    text = np.array([[1.0, 1.0], [-1.0, 0.0], [0.0, 0.5], [1.0, -1.0]])
    np.testing.assert_allclose(clip_scores(image, text), [100 / math.sqrt(2), 0.0, 100.0, 0.0], atol=1e-12)
    with pytest.raises(QualityError, match="zero embedding"):
        clip_scores(np.zeros((1, 2)), np.ones((1, 2)))
    with pytest.raises(QualityError, match=r"\(B, D\)"):
        clip_scores(np.ones((2, 3)), np.ones((3, 3)))


# ----------------------------------------------------------------------------- tiny models on disk


pytestmark = pytest.mark.usefixtures("one_thread")


def _vit_config(**kwargs):
    from transformers import ViTConfig

    return ViTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=SIZE,
        patch_size=8,
        **kwargs,
    )


def _vit_processor():
    from transformers import ViTImageProcessorPil

    return ViTImageProcessorPil(size={"height": SIZE, "width": SIZE})


def _vit_pixels(images: np.ndarray) -> torch.Tensor:
    """ViT preprocessing by hand for SIZE x SIZE images: x / 255, mean 0.5, std 0.5, channels first."""
    return torch.from_numpy((images.astype(np.float32) / 255.0 - 0.5) / 0.5).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Tiny random ViT (base, classifier), ResNet and CLIP directories, as save_pretrained writes them."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
        ResNetConfig,
        ResNetForImageClassification,
        ViTForImageClassification,
        ViTModel,
    )

    from idruid.models.text_encoder import EMBEDDED_TOKENIZER

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("quality-models")
    dirs = {name: root / name for name in ("vit", "vit-cls", "resnet", "clip")}
    ViTModel(_vit_config()).save_pretrained(dirs["vit"])
    ViTForImageClassification(_vit_config(num_labels=5)).save_pretrained(dirs["vit-cls"])
    resnet = ResNetConfig(embedding_size=8, hidden_sizes=[8, 12], depths=[1, 1], num_labels=3)
    ResNetForImageClassification(resnet).save_pretrained(dirs["resnet"])
    for name in ("vit", "vit-cls", "resnet"):
        _vit_processor().save_pretrained(dirs[name])

    tokenizer = CLIPTokenizer.from_pretrained(str(EMBEDDED_TOKENIZER))
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    clip = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            **special,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=SIZE,
            patch_size=8,
        ),
        projection_dim=8,
    )
    CLIPModel(clip).save_pretrained(dirs["clip"])
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(dirs["clip"])
    return dirs


def test_feature_extractor_pooler_matches_direct_forward(model_dirs):
    from transformers import ViTModel

    images = _images(5, seed=0)
    extractor = FeatureExtractor(model_dirs["vit"])
    assert extractor.pool == "pooler" and "vit" in extractor.name and "pooler" in extractor.name
    model = ViTModel.from_pretrained(model_dirs["vit"]).eval()
    with torch.no_grad():
        expected = model(pixel_values=_vit_pixels(images)).pooler_output.double().numpy()
    features = extractor(images, batch_size=2)  # three batches: 2 + 2 + 1
    assert features.shape == (5, 16)
    np.testing.assert_allclose(features, expected, atol=1e-5)
    np.testing.assert_allclose(extractor(list(images), batch_size=5), features, atol=1e-5)


def test_feature_extractor_on_a_classifier_dir_pools_tokens(model_dirs):
    from transformers import ViTForImageClassification

    images = _images(3, seed=1)
    extractor = FeatureExtractor(model_dirs["vit-cls"])
    # The classification checkpoint has no pooler weights: never use a randomly initialised one.
    assert extractor.pool == "token-mean" and "token-mean" in extractor.name
    model = ViTForImageClassification.from_pretrained(model_dirs["vit-cls"]).eval()
    with torch.no_grad():
        expected = model.vit(pixel_values=_vit_pixels(images)).last_hidden_state.mean(dim=1).double().numpy()
    np.testing.assert_allclose(extractor(images), expected, atol=1e-5)


def test_feature_extractor_resnet_and_clip(model_dirs):
    from transformers import CLIPModel, ResNetModel

    images = _images(3, seed=2)
    resnet = FeatureExtractor(model_dirs["resnet"])
    assert resnet.pool == "pooler"
    model = ResNetModel.from_pretrained(model_dirs["resnet"]).eval()
    with torch.no_grad():
        hidden = model(pixel_values=_vit_pixels(images)).last_hidden_state  # (B, C, H, W)
    # ResNet's pooler is a global average pool of the last feature map.
    np.testing.assert_allclose(resnet(images), hidden.mean(dim=(2, 3)).double().numpy(), atol=1e-5)

    clip = FeatureExtractor(model_dirs["clip"])
    assert clip.pool == "image-embeds" and clip.name.startswith("clip (clip, image-embeds")
    model = CLIPModel.from_pretrained(model_dirs["clip"]).eval()
    pixels = clip.processor(images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
    expected = getattr(out, "pooler_output", out)
    np.testing.assert_allclose(clip(images), expected.double().numpy(), atol=1e-5)


def test_classifier_probabilities_and_missing_head(model_dirs):
    from transformers import ViTForImageClassification

    images = _images(4, seed=3)
    classifier = Classifier(model_dirs["vit-cls"])
    assert classifier.num_classes == 5 and "5 classes" in classifier.name
    model = ViTForImageClassification.from_pretrained(model_dirs["vit-cls"]).eval()
    with torch.no_grad():
        logits = model(pixel_values=_vit_pixels(images)).logits.double().numpy()
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(classifier(images, batch_size=3), expected, atol=1e-6)
    with pytest.raises(QualityError, match=r"--is-classifier .*random weights for classifier"):
        Classifier(model_dirs["vit"])  # a base model: the head would be random


def _direct_clip_scores(model_dir, images, prompts, max_length):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = CLIPProcessor.from_pretrained(model_dir)
    text = processor.tokenizer(
        prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    pixels = processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        image_out = model.get_image_features(pixel_values=pixels)
        text_out = model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
    image_emb = getattr(image_out, "pooler_output", image_out).double()
    text_emb = getattr(text_out, "pooler_output", text_out).double()
    cosine = torch.nn.functional.cosine_similarity(image_emb, text_emb, dim=-1).numpy()
    return cosine


def test_clip_scorer_matches_get_features(model_dirs):
    images = _images(8, seed=4)
    prompts = [
        "a red circle",
        "a blue square",
        "a green triangle on the left",
        "two circles",
        "a striped square and a dotted circle next to a red triangle on a grey background at noon",
        "a circle",
        "a yellow square",
        "a purple triangle",
    ]
    scorer = ClipScorer(model_dirs["clip"])
    scores = scorer(images, prompts, batch_size=3)
    cosine = _direct_clip_scores(model_dirs["clip"], images, prompts, max_length=16)
    # Random weights give cosines of both signs: both branches of the max are exercised.
    assert (cosine > 0).any() and (cosine < 0).any()
    np.testing.assert_allclose(scores, 100 * np.maximum(cosine, 0), atol=1e-4)
    assert scorer.truncated == 1  # the long prompt is cut to the model's 16 positions
    with pytest.raises(QualityError, match="8 images but 2 prompts"):
        scorer(images, prompts[:2])


# ----------------------------------------------------------------------------- image_quality and files


def test_image_quality_computes_what_it_is_given(model_dirs):
    images, reference = _images(6, seed=5), _images(7, seed=6)
    prompts = ["a red circle"] * 6
    result = image_quality(
        images,
        reference_images=reference,
        feature_dir=model_dirs["vit"],
        classifier_dir=model_dirs["vit-cls"],
        clip_dir=model_dirs["clip"],
        prompts=prompts,
        is_splits=2,
    )
    extractor = FeatureExtractor(model_dirs["vit"])
    expected_fid = frechet_distance(
        *feature_statistics(extractor(images)), *feature_statistics(extractor(reference))
    )
    assert result["fid"] == pytest.approx(expected_fid, rel=1e-6) and result["fid"] > 0
    assert result["fid_features"] == extractor.name and result["num_reference"] == 7
    mean, std = inception_score(Classifier(model_dirs["vit-cls"])(images), 2)
    assert result["inception_score"] == pytest.approx(mean)
    assert result["inception_score_std"] == pytest.approx(std)
    assert result["is_classifier"].startswith("vit-cls (vit, 5 classes")
    cosine = _direct_clip_scores(model_dirs["clip"], images, prompts, max_length=16)
    assert result["clip_score"] == pytest.approx(float(np.mean(100 * np.maximum(cosine, 0))), abs=1e-4)
    assert result["num_images"] == 6 and result["clip_truncated_prompts"] == 0

    only_fid = image_quality(images, reference_images=images, feature_dir=model_dirs["vit"])
    assert only_fid["fid"] == pytest.approx(0.0, abs=1e-6)
    assert set(only_fid) == {"num_images", "fid", "fid_features", "fid_features_dir", "num_reference"}


def test_image_quality_errors_name_the_flag(model_dirs, tmp_path):
    images = _images(4, seed=7)
    cases = [
        (dict(reference_images=images), "--fid-features"),
        (dict(feature_dir=model_dirs["vit"]), "--reference"),
        (dict(clip_dir=model_dirs["clip"]), "--prompts"),
        (dict(prompts=["a"] * 4), "--clip"),
        (dict(), "nothing to compute"),
        (dict(classifier_dir=tmp_path / "absent", is_splits=2), "--is-classifier .*absent: not a directory"),
        (dict(classifier_dir=tmp_path, is_splits=2), "--is-classifier .*no config.json"),
        (dict(reference_images=images, feature_dir=tmp_path), "--fid-features .*no config.json"),
        (dict(classifier_dir=model_dirs["vit-cls"], is_splits=5), "--is-splits 5"),
        (dict(clip_dir=model_dirs["clip"], prompts=["a"] * 3), "--prompts: 3 prompts for 4 images"),
    ]
    for kwargs, message in cases:
        with pytest.raises(QualityError, match=message):
            image_quality(images, **kwargs)
    with pytest.raises(QualityError, match=r"images\[1\] must be \(H, W, 3\) uint8"):
        image_quality([images[0], images[1].astype(np.float32)], classifier_dir=model_dirs["vit-cls"])


def test_load_image_dir_and_prompts(tmp_path):
    from PIL import Image

    images = _images(3, seed=8)
    for k, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{2 - k:05d}.png")  # written in reverse name order
    (tmp_path / "notes.json").write_text("{}")  # not an image: skipped
    loaded = load_image_dir(tmp_path)
    np.testing.assert_array_equal(np.stack(loaded), images[::-1])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(QualityError, match="--images .*broken.png: cannot read"):
        load_image_dir(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QualityError, match="--reference .*no images"):
        load_image_dir(empty, flag="--reference")

    txt = tmp_path / "prompts.txt"
    txt.write_text("a red circle\n a blue square \n\n")
    assert load_prompts(txt) == ["a red circle", "a blue square"]
    txt.write_text("a red circle\n\na blue square\n")
    with pytest.raises(QualityError, match="line 2 is empty"):
        load_prompts(txt)
    layouts = tmp_path / "layouts.jsonl"
    box = [0.1, 0.1, 0.5, 0.5]
    layouts.write_text(
        "\n".join(json.dumps({"prompt": p, "instances": [{"caption": "c", "box": box}]}) for p in ("x", "y"))
    )
    assert load_prompts(layouts) == ["x", "y"]
    layouts.write_text(json.dumps({"prompt": "x", "instances": [{"caption": "c", "box": [0.5, 0, 0.1, 1]}]}))
    with pytest.raises(QualityError, match="--prompts .*box"):
        load_prompts(layouts)


def test_cli_quality_writes_json(model_dirs, tmp_path, capsys):
    from PIL import Image

    from idruid.cli import main

    generated, reference = tmp_path / "generated", tmp_path / "reference"
    for folder, seed in ((generated, 9), (reference, 10)):
        folder.mkdir()
        for k, image in enumerate(_images(4, seed)):
            Image.fromarray(image).save(folder / f"{k:05d}.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na circle\na square\n")
    out = tmp_path / "quality.json"
    argv = [
        "quality", "--images", str(generated), "--reference", str(reference),
        "--fid-features", str(model_dirs["vit"]), "--is-classifier", str(model_dirs["vit-cls"]),
        "--is-splits", "2", "--clip", str(model_dirs["clip"]), "--prompts", str(prompts), "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    written = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == written
    expected = image_quality(
        load_image_dir(generated),
        reference_images=load_image_dir(reference),
        feature_dir=model_dirs["vit"],
        classifier_dir=model_dirs["vit-cls"],
        clip_dir=model_dirs["clip"],
        prompts=load_prompts(prompts),
        is_splits=2,
    )
    assert written == pytest.approx(expected)

    assert main(["quality", "--images", str(generated), "--reference", str(reference)]) == 2
    assert "--fid-features" in capsys.readouterr().err
    assert main(["quality", "--images", str(tmp_path / "nowhere"), "--is-classifier", "x"]) == 2
    assert "idruid: error: --images" in capsys.readouterr().err
