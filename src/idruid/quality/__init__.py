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

scores.py holds the formulas, inputs.py the image folders and prompt files, models.py the
local models; ``image_quality`` below runs what the arguments allow.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..errors import QualityError
from .inputs import IMAGE_SUFFIXES, ImageBatch, check_images, load_image_dir, load_prompts
from .models import Classifier, ClipScorer, FeatureExtractor
from .scores import (
    clip_scores,
    feature_statistics,
    frechet_distance,
    inception_score,
    split_bounds,
    trace_sqrt_product,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "Classifier",
    "ClipScorer",
    "FeatureExtractor",
    "ImageBatch",
    "QualityError",
    "check_images",
    "clip_scores",
    "feature_statistics",
    "frechet_distance",
    "image_quality",
    "inception_score",
    "load_image_dir",
    "load_prompts",
    "split_bounds",
    "trace_sqrt_product",
]


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
