"""Image-quality metrics of paper Table 2 (LayoutSAM-eval): FID, Inception Score and a CLIP-style score.

- FID: the Frechet distance ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between Gaussians fitted to
  image features of the generated and the reference images.
- IS: exp(E_x KL(p(y|x) || p(y))) from a classifier's predictions, mean and std over ``splits`` chunks.
- CLIP score: 100 * max(cos(image embedding, prompt embedding), 0) per image-prompt pair, averaged.

Every model comes from a LOCAL transformers directory given by the user; nothing is downloaded.
The standard FID and IS use the TensorFlow Inception-v3 weights (pool3 features, 1008-way logits),
which transformers does not ship, so numbers computed here are comparable with each other only
when they come from the same extractor, never with published values from another one. The
extractor, classifier and CLIP model therefore go into every result by name.
The paper's third column is PickScore, a CLIP fine-tune; its directory loads here as a CLIP model,
but the score reported here is the CLIP-style one above, not PickScore's scaled logit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .textfile import read_text

ImageBatch = np.ndarray | Sequence[np.ndarray]  # (B, H, W, 3) uint8, or B arrays (H_b, W_b, 3) uint8
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class QualityError(ValueError):
    """Bad input to a quality metric: the message names the argument, file or command-line flag."""


# ----------------------------------------------------------------------------- FID math


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64, as FID fits them."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise QualityError(f"features must be (N, D), got shape {features.shape}")
    if len(features) < 2:
        raise QualityError(f"need at least 2 feature vectors for a covariance, got {len(features)}")
    if not np.isfinite(features).all():
        raise QualityError("features contain NaN or inf")
    return features.mean(axis=0), np.cov(features, rowvar=False, ddof=1).reshape(features.shape[1], -1)


def _check_covariance(sigma: np.ndarray, name: str, dim: int) -> np.ndarray:
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.shape != (dim, dim):
        raise QualityError(f"{name} must be ({dim}, {dim}) to match the mean, got {sigma.shape}")
    if not np.isfinite(sigma).all():
        raise QualityError(f"{name} contains NaN or inf")
    scale = max(1.0, float(np.abs(sigma).max()))
    if np.abs(sigma - sigma.T).max() > 1e-6 * scale:
        raise QualityError(f"{name} is not symmetric, so it is no covariance")
    return (sigma + sigma.T) / 2


def _psd_eigvals(eigvals: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with those at rounding level set to exactly 0.

    A zero eigenvalue comes out of eigh as +-1e-16 * the largest, and its square root as 1e-8,
    which would add 1e-8 per null direction to Tr sqrt (thousands of them for 2048-d features
    of a few hundred images). Below the rank tolerance of numpy.linalg.matrix_rank
    (size * float eps * largest) an eigenvalue is indistinguishable from 0, so it is 0.
    """
    tolerance = len(eigvals) * np.finfo(np.float64).eps * max(float(np.abs(eigvals).max()), 1e-300)
    return np.where(eigvals > tolerance, eigvals, 0.0)


def _psd_sqrt(sigma: np.ndarray, name: str) -> np.ndarray:
    """Symmetric square root of a PSD matrix (rounding-level eigenvalues set to 0)."""
    eigvals, eigvecs = np.linalg.eigh(sigma)
    if eigvals.min() < -1e-6 * max(1.0, float(np.abs(eigvals).max())):
        raise QualityError(f"{name} has eigenvalue {eigvals.min():.3g} < 0, so it is no covariance")
    return (eigvecs * np.sqrt(_psd_eigvals(eigvals))) @ eigvecs.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr (S1 S2)^(1/2) for symmetric PSD S1, S2.

    Why eigendecompositions and not scipy.linalg.sqrtm(S1 @ S2): with R = S1^(1/2) (symmetric),
    S1 S2 = R (R S2) and R S2 R = (R S2) R; AB and BA share their eigenvalues, so S1 S2 has the
    eigenvalues of R S2 R, which is symmetric PSD: real and >= 0. The principal root (S1 S2)^(1/2)
    has their square roots as eigenvalues, so its trace is sum sqrt(eig(R S2 R)), the
    Dowson-Landau form of the distance. Two symmetric eigendecompositions give it with no complex
    parts to discard and no epsilon, also when S1 S2 is singular (fewer images than feature
    dimensions), where sqrtm of the non-symmetric product is inaccurate and FID code retries it
    with eps * I added to both covariances, which changes the result.
    """
    root1 = _psd_sqrt(sigma1, "sigma1")
    middle = root1 @ sigma2 @ root1
    eigvals = np.linalg.eigvalsh((middle + middle.T) / 2)
    if eigvals.min() < -1e-6 * max(1.0, float(np.abs(eigvals).max())):
        raise QualityError(f"sigma2 is not PSD (S1^1/2 S2 S1^1/2 has eigenvalue {eigvals.min():.3g})")
    return float(np.sqrt(_psd_eigvals(eigvals)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared 2-Wasserstein (Frechet) distance between N(mu1, sigma1) and N(mu2, sigma2): the FID."""
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise QualityError(f"mu1 and mu2 must be vectors of one length, got {mu1.shape} and {mu2.shape}")
    dim = len(mu1)
    sigma1 = _check_covariance(np.atleast_2d(sigma1), "sigma1", dim)
    sigma2 = _check_covariance(np.atleast_2d(sigma2), "sigma2", dim)
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    # A squared distance: a negative value can only be rounding (identical statistics give ~ -1e-13).
    return max(float(distance), 0.0)


# ----------------------------------------------------------------------------- IS and CLIP math


def split_bounds(count: int, splits: int) -> list[tuple[int, int]]:
    """Chunks [k N / splits, (k + 1) N / splits) as in the original Inception Score code."""
    return [(k * count // splits, (k + 1) * count // splits) for k in range(splits)]


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Mean and std over ``splits`` chunks of exp(mean_x KL(p(y|x) || p(y))), p(y) the chunk's mean.

    probs (N, C) rows are class distributions. The score lies in [1, C]: 1 when every image gets
    the same prediction, C when the predictions are one-hot and spread evenly over the classes.
    """
    from scipy.special import rel_entr

    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise QualityError(f"probs must be (N, num_classes), got shape {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise QualityError("probs must be finite and non-negative")
    row_sums = probs.sum(axis=1)
    if np.abs(row_sums - 1.0).max() > 1e-6:
        row = int(np.abs(row_sums - 1.0).argmax())
        raise QualityError(f"probs row {row} sums to {row_sums[row]:.6g}, not 1")
    if not 1 <= splits <= len(probs):
        raise QualityError(f"splits must be in [1, number of images = {len(probs)}], got {splits}")
    scores = []
    for start, end in split_bounds(len(probs), splits):
        chunk = probs[start:end]  # (n, C)
        marginal = chunk.mean(axis=0, keepdims=True)  # (1, C) p(y); > 0 wherever chunk > 0
        kl = rel_entr(chunk, marginal).sum(axis=1)  # (n,) with 0 log 0 = 0
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def clip_scores(image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
    """100 * max(cos(image_b, text_b), 0) for each pair b: image_embeds, text_embeds (B, D) -> (B,)."""
    image_embeds = np.asarray(image_embeds, dtype=np.float64)
    text_embeds = np.asarray(text_embeds, dtype=np.float64)
    if image_embeds.ndim != 2 or image_embeds.shape != text_embeds.shape:
        raise QualityError(
            f"image and text embeddings must both be (B, D), got {image_embeds.shape} and {text_embeds.shape}"
        )
    norms = np.linalg.norm(image_embeds, axis=1) * np.linalg.norm(text_embeds, axis=1)
    if (norms == 0).any():
        raise QualityError(f"pair {int(np.argmax(norms == 0))} has a zero embedding: no cosine")
    cosine = (image_embeds * text_embeds).sum(axis=1) / norms
    return 100.0 * np.maximum(cosine, 0.0)


# ----------------------------------------------------------------------------- images and prompts


def check_images(images: ImageBatch, name: str = "images") -> list[np.ndarray]:
    """A list of (H, W, 3) uint8 arrays (sizes may differ: the processors resize), checked."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    checked = []
    for k, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise QualityError(f"{name}[{k}] must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        checked.append(image)
    if not checked:
        raise QualityError(f"{name} is empty")
    return checked


def load_image_dir(path: str | os.PathLike, flag: str = "--images") -> list[np.ndarray]:
    """The images of a folder (png, jpg, webp, bmp), sorted by file name, as RGB uint8 arrays."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_dir():
        raise QualityError(f"{flag} {path}: not a directory")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise QualityError(f"{flag} {path}: no images ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                images.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as err:
            raise QualityError(f"{flag} {file}: cannot read the image ({err})") from err
    return images


def load_prompts(path: str | os.PathLike, flag: str = "--prompts") -> list[str]:
    """Prompts in image order: a .txt file with one prompt per line, or a layout file (.json / .jsonl)
    whose layouts' prompts are taken, so the layouts given to ``idruid generate`` serve directly."""
    path = Path(path)
    if not path.is_file():
        raise QualityError(f"{flag} {path}: file not found")
    if path.suffix.lower() in (".json", ".jsonl"):
        from .layout import LayoutError, load_layouts

        try:
            return [layout.prompt for layout in load_layouts(path)]
        except LayoutError as err:
            raise QualityError(f"{flag} {err}") from err
    lines = read_text(path, QualityError).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()  # trailing blank lines are not prompts
    for k, line in enumerate(lines):
        if not line.strip():
            raise QualityError(f"{flag} {path}: line {k + 1} is empty (one prompt per line)")
    if not lines:
        raise QualityError(f"{flag} {path}: no prompts")
    return [line.strip() for line in lines]


def _batches(images: list[np.ndarray], batch_size: int) -> Iterator[list[np.ndarray]]:
    if batch_size < 1:
        raise QualityError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


# ----------------------------------------------------------------------------- models


def _model_dir(path: str | os.PathLike | None, flag: str, what: str) -> Path:
    if path is None:
        raise QualityError(f"{what} needs a local model directory: pass {flag} DIR")
    directory = Path(path)
    if not directory.is_dir():
        raise QualityError(f"{flag} {directory}: not a directory")
    if not (directory / "config.json").is_file():
        raise QualityError(
            f"{flag} {directory}: no config.json (expected a transformers model directory "
            "written by save_pretrained)"
        )
    return directory


def _load(loader, directory: Path, flag: str, **kwargs):
    """from_pretrained with its errors turned into a QualityError naming the flag."""
    try:
        return loader.from_pretrained(str(directory), **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise QualityError(f"{flag} {directory}: cannot load {loader.__name__} ({err})") from err


def _load_model(loader, directory: Path, flag: str, allowed_missing: tuple[str, ...] = ()):
    """A model in eval mode, float32, plus the names of the weights missing from the checkpoint
    (those under ``allowed_missing`` prefixes); any other missing weight is an error, since
    transformers would fill it with random values and the metric would mean nothing."""
    model, info = _load(loader, directory, flag, output_loading_info=True)
    missing = sorted(info.get("missing_keys", ()))
    fatal = [key for key in missing if not key.startswith(allowed_missing)]
    if fatal:
        shown = ", ".join(fatal[:4]) + (" ..." if len(fatal) > 4 else "")
        raise QualityError(
            f"{flag} {directory}: {type(model).__name__} would start with random weights for {shown} "
            "(not in the checkpoint): give a directory of that kind of model"
        )
    return model.float().eval(), missing


def _name(directory: Path, model, *details: str) -> str:
    """What identifies a metric's model in results, e.g. 'vit-base (vit, pooler, 768-d)'."""
    return f"{directory.resolve().name} ({', '.join((model.config.model_type, *details))})"


class FeatureExtractor:
    """Pooled image features (N, D) from a local transformers vision model, for FID.

    The standard FID uses Inception-v3 pool3 features (2048-d) with TensorFlow weights, which
    transformers does not ship; any local vision model works here (a CLIP, ViT, DINOv2, ResNet or
    image-classification directory) and ``name`` records which one, and how it was pooled:
    - ``image-embeds``: a joint model's image embedding (``get_image_features``, e.g. CLIP);
    - ``pooler``: the model's own pooled output (CLS head, global average pool);
    - ``token-mean``: the mean of the last hidden states, used only when the pooler weights are
      missing from the checkpoint (a classification checkpoint loaded as its base model).
    """

    def __init__(
        self, directory: str | os.PathLike | None, device: str = "cpu", flag: str = "--fid-features"
    ) -> None:
        from transformers import AutoImageProcessor, AutoModel

        self.directory = _model_dir(directory, flag, "FID")
        model, missing = _load_model(AutoModel, self.directory, flag, allowed_missing=("pooler.",))
        self.model = model.to(device)
        self.processor = _load(AutoImageProcessor, self.directory, flag)
        self.device = device
        if hasattr(self.model, "get_image_features"):
            self.pool = "image-embeds"
        elif missing:
            self.pool = "token-mean"
        else:
            self.pool = "pooler"
        self.name = _name(self.directory, self.model, self.pool)

    def _forward(self, pixel_values):
        if self.pool == "image-embeds":
            out = self.model.get_image_features(pixel_values=pixel_values)
            return out if not hasattr(out, "pooler_output") else out.pooler_output  # transformers 4 / 5
        out = self.model(pixel_values=pixel_values)
        if self.pool == "pooler" and getattr(out, "pooler_output", None) is not None:
            return out.pooler_output.flatten(1)  # (B, D) or (B, C, 1, 1) -> (B, C)
        hidden = out.last_hidden_state  # (B, T, D) tokens or (B, C, H, W) feature map
        return hidden.mean(dim=1) if hidden.ndim == 3 else hidden.mean(dim=(2, 3))

    def __call__(self, images: ImageBatch, batch_size: int = 32) -> np.ndarray:
        import torch

        features = []
        with torch.no_grad():
            for batch in _batches(check_images(images), batch_size):
                inputs = self.processor(images=batch, return_tensors="pt", input_data_format="channels_last")
                features.append(self._forward(inputs["pixel_values"].to(self.device)).double().cpu().numpy())
        return np.concatenate(features)  # (N, D)


class Classifier:
    """Class probabilities (N, C) from a local image-classification directory, for IS.

    The standard IS uses Inception-v3's 1008-way ImageNet logits; here any classifier works and
    ``name`` records which, so scores are compared only between runs of the same classifier.
    """

    def __init__(
        self, directory: str | os.PathLike | None, device: str = "cpu", flag: str = "--is-classifier"
    ) -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.directory = _model_dir(directory, flag, "the Inception Score")
        self.model, _ = _load_model(AutoModelForImageClassification, self.directory, flag)
        self.model.to(device)
        self.processor = _load(AutoImageProcessor, self.directory, flag)
        self.device = device
        self.num_classes = int(self.model.config.num_labels)
        self.name = _name(self.directory, self.model, f"{self.num_classes} classes")

    def __call__(self, images: ImageBatch, batch_size: int = 32) -> np.ndarray:
        import torch

        probs = []
        with torch.no_grad():
            for batch in _batches(check_images(images), batch_size):
                inputs = self.processor(images=batch, return_tensors="pt", input_data_format="channels_last")
                logits = self.model(pixel_values=inputs["pixel_values"].to(self.device)).logits
                probs.append(torch.softmax(logits.double(), dim=-1).cpu().numpy())
        return np.concatenate(probs)  # (N, C)


class ClipScorer:
    """Per-pair CLIP-style scores from a local CLIP directory (``CLIPModel`` + ``CLIPProcessor``)."""

    def __init__(
        self, directory: str | os.PathLike | None, device: str = "cpu", flag: str = "--clip"
    ) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.directory = _model_dir(directory, flag, "the CLIP score")
        self.model, _ = _load_model(CLIPModel, self.directory, flag)
        self.model.to(device)
        self.processor = _load(CLIPProcessor, self.directory, flag)
        self.device = device
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self.name = _name(self.directory, self.model)
        self.truncated = 0  # prompts cut to max_length tokens in the last call

    def __call__(self, images: ImageBatch, prompts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """images[b] scored against prompts[b] -> (B,) scores in [0, 100]."""
        import torch

        images = check_images(images)
        prompts = list(prompts)
        if len(prompts) != len(images):
            raise QualityError(f"got {len(images)} images but {len(prompts)} prompts: one prompt per image")
        tokenizer = self.processor.tokenizer
        lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
        self.truncated = sum(length > self.max_length for length in lengths)
        if batch_size < 1:
            raise QualityError(f"batch_size must be >= 1, got {batch_size}")
        image_embeds, text_embeds = [], []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                pixels = self.processor.image_processor(
                    images=batch, return_tensors="pt", input_data_format="channels_last"
                )["pixel_values"]
                text = tokenizer(
                    prompts[start : start + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                out = self.model(
                    input_ids=text["input_ids"].to(self.device),
                    attention_mask=text["attention_mask"].to(self.device),
                    pixel_values=pixels.to(self.device),
                )
                image_embeds.append(out.image_embeds.double().cpu().numpy())
                text_embeds.append(out.text_embeds.double().cpu().numpy())
        return clip_scores(np.concatenate(image_embeds), np.concatenate(text_embeds))


# ----------------------------------------------------------------------------- all together


def image_quality(
    images: ImageBatch,
    reference_images: ImageBatch | None = None,
    feature_dir: str | os.PathLike | None = None,
    classifier_dir: str | os.PathLike | None = None,
    clip_dir: str | os.PathLike | None = None,
    prompts: Sequence[str] | None = None,
    is_splits: int = 10,
    batch_size: int = 32,
    device: str = "cpu",
) -> dict:
    """The metrics the arguments allow: FID (reference_images + feature_dir), IS (classifier_dir),
    CLIP score (clip_dir + prompts, one per image); each with the name of the model it used."""
    images = check_images(images)
    if reference_images is None and feature_dir is not None:
        raise QualityError("FID needs reference images: pass --reference DIR (reference_images)")
    if clip_dir is None and prompts is not None:
        raise QualityError("prompts are for the CLIP score, which needs a CLIP model: pass --clip DIR")
    if clip_dir is not None and prompts is None:
        raise QualityError("the CLIP score needs one prompt per image: pass --prompts FILE")
    if reference_images is None and classifier_dir is None and clip_dir is None:
        raise QualityError(
            "nothing to compute: pass --reference DIR with --fid-features DIR (FID), "
            "--is-classifier DIR (IS) or --clip DIR with --prompts FILE (CLIP score)"
        )
    # Checks that need no model come first, so a bad flag fails before minutes of feature extraction.
    if prompts is not None and len(prompts) != len(images):
        raise QualityError(f"--prompts: {len(prompts)} prompts for {len(images)} images (one per image)")
    if classifier_dir is not None and not 1 <= is_splits <= len(images):
        raise QualityError(f"--is-splits {is_splits}: must be between 1 and the {len(images)} images")
    result: dict = {"num_images": len(images)}
    if reference_images is not None:
        reference_images = check_images(reference_images, "reference_images")
        extractor = FeatureExtractor(feature_dir, device)  # names --fid-features when it is None
        stats = feature_statistics(extractor(images, batch_size))
        reference_stats = feature_statistics(extractor(reference_images, batch_size))
        result.update(
            fid=frechet_distance(*stats, *reference_stats),
            fid_features=extractor.name,
            fid_features_dir=str(extractor.directory.resolve()),
            num_reference=len(reference_images),
        )
    if classifier_dir is not None:
        classifier = Classifier(classifier_dir, device)
        mean, std = inception_score(classifier(images, batch_size), is_splits)
        result.update(
            inception_score=mean,
            inception_score_std=std,
            is_splits=is_splits,
            is_classifier=classifier.name,
            is_classifier_dir=str(classifier.directory.resolve()),
        )
    if clip_dir is not None:
        scorer = ClipScorer(clip_dir, device)
        scores = scorer(images, prompts, batch_size)
        result.update(
            clip_score=float(scores.mean()),
            clip_model=scorer.name,
            clip_model_dir=str(scorer.directory.resolve()),
            clip_truncated_prompts=scorer.truncated,
        )
    return result
