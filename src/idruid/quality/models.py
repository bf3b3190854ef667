"""The models behind the quality metrics, each from a LOCAL transformers directory (nothing is
downloaded): image features for FID, class probabilities for IS and CLIP embeddings for the CLIP
score; every one records by ``name`` which model it is, since scores from different models are
not comparable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import QualityError
from .inputs import ImageBatch, check_images, image_batches
from .scores import clip_scores

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


def _load_local(
    directory, flag: str, what: str, model_loader, processor_loader, device: str, allowed_missing=()
):
    """A metric's local model folder, checked, then its model (eval, float32, on ``device``), the
    weights missing from it (see _load_model) and its processor."""
    folder = _model_dir(directory, flag, what)
    model, missing = _load_model(model_loader, folder, flag, allowed_missing)
    return folder, model.to(device), missing, _load(processor_loader, folder, flag)


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

        self.directory, self.model, missing, self.processor = _load_local(
            directory, flag, "FID", AutoModel, AutoImageProcessor, device, allowed_missing=("pooler.",)
        )
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
            for batch in image_batches(check_images(images), batch_size):
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

        self.directory, self.model, _, self.processor = _load_local(
            directory,
            flag,
            "the Inception Score",
            AutoModelForImageClassification,
            AutoImageProcessor,
            device,
        )
        self.device = device
        self.num_classes = int(self.model.config.num_labels)
        self.name = _name(self.directory, self.model, f"{self.num_classes} classes")

    def __call__(self, images: ImageBatch, batch_size: int = 32) -> np.ndarray:
        import torch

        probs = []
        with torch.no_grad():
            for batch in image_batches(check_images(images), batch_size):
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

        self.directory, self.model, _, self.processor = _load_local(
            directory, flag, "the CLIP score", CLIPModel, CLIPProcessor, device
        )
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
