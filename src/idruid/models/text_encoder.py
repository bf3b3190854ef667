"""The frozen CLIP text encoder that conditions the layout-to-image model (paper 3.1).

The global prompt gives a token sequence (``hidden``) and a pooled vector (``pooled``, the
EOS token's state, or the projected one for a ``CLIPTextModelWithProjection`` such as SD3's);
each instance caption is read the same way. The encoder is frozen, so ``encode`` caches one
row per distinct string: the same captions recur millions of times in training.

Two folder layouts load with ``FrozenTextEncoder.from_pretrained``:

- diffusers: ``<dir>/text_encoder/`` (config.json + weights) and ``<dir>/tokenizer/``
  (vocab.json + merges.txt), as in a real SD1.5 or SD3 folder;
- flat: config.json, model.safetensors, vocab.json and merges.txt in ``<dir>`` itself.

The embedded encoder (``EMBEDDED_TEXT_ENCODER``, written by scripts/pretrain_text_encoder.py)
uses the flat layout: it holds a copy of the tokenizer files of ``EMBEDDED_TOKENIZER``.

``load_text_encoder(spec)`` picks the encoder for a spec: the embedded one, SD3's three encoders
(idruid.models.sd3_text) or one CLIP (SD1.5 / flat folder). ``CachedTextEncoder`` (in
idruid.models.text_cache, below both encoders) holds what they share: the per-text cache, freezing
and the ``encode`` interface the models call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .text_cache import CachedTextEncoder, TextEmbeddings, default_cache_size

if TYPE_CHECKING:
    from .sd3_text import SD3TextEncoder

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EMBEDDED_TOKENIZER = ASSETS / "tokenizer"  # written by scripts/build_tokenizer.py
EMBEDDED_TEXT_ENCODER = ASSETS / "text_encoder"  # written by scripts/pretrain_text_encoder.py

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def load_tokenizer(path: str | Path = EMBEDDED_TOKENIZER) -> CLIPTokenizer:
    """A CLIPTokenizer from a folder with vocab.json + merges.txt (or tokenizer.json)."""
    path = Path(path)
    missing = _missing_tokenizer_files(path)
    if missing:
        raise FileNotFoundError(f"no CLIP tokenizer in {path}: missing {missing}")
    return CLIPTokenizer.from_pretrained(str(path))


def _missing_tokenizer_files(path: Path) -> str | None:
    if (path / "tokenizer.json").is_file():
        return None
    missing = [name for name in ("vocab.json", "merges.txt") if not (path / name).is_file()]
    return " and ".join(missing) or None


def _missing_model_files(path: Path) -> str | None:
    if not (path / "config.json").is_file():
        return "config.json"
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        return "weights (" + " or ".join(_WEIGHT_FILES) + ")"
    return None


class FrozenTextEncoder(CachedTextEncoder):
    """A frozen CLIP text model plus its tokenizer; ``encode(texts) -> TextEmbeddings``."""

    def __init__(
        self,
        model: CLIPTextModel | CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        max_length: int | None = None,
        cache_size: int | None = None,
    ):
        """max_length: tokens per text incl. BOS/EOS (pad and truncate to it); default: the
        smaller of the model's max_position_embeddings and the tokenizer's model_max_length.
        cache_size: distinct texts kept (least recently used dropped first); 0 disables; None:
        as many as fit in CACHE_BYTES (25k texts for the tiny encoder, 1k for SD's CLIP-L)."""
        config = model.config
        if len(tokenizer) > config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model only {config.vocab_size}")
        limit = config.max_position_embeddings
        max_length = max_length or min(limit, tokenizer.model_max_length)
        if max_length > limit:
            raise ValueError(f"max_length {max_length} exceeds max_position_embeddings {limit}")
        if cache_size is None:
            cache_size = default_cache_size(max_length * (config.hidden_size + 1) + config.hidden_size)
        super().__init__(cache_size)
        self.max_length = max_length
        self.model = model
        self.tokenizer = tokenizer
        self._freeze()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        subfolder: str = "text_encoder",
        tokenizer_subfolder: str = "tokenizer",
        **kwargs,
    ) -> FrozenTextEncoder:
        """Load from a diffusers folder (``<path>/text_encoder`` + ``<path>/tokenizer``; pass
        ``subfolder="text_encoder_2", tokenizer_subfolder="tokenizer_2"`` for SD3's second
        CLIP) or from a flat folder with config, weights and tokenizer files together."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"text encoder folder not found: {path}")
        if (path / subfolder).is_dir() or (path / tokenizer_subfolder).is_dir():
            model_dir, tok_dir = path / subfolder, path / tokenizer_subfolder
        else:
            model_dir = tok_dir = path
        missing = [f"{model_dir}/{m}" for m in [_missing_model_files(model_dir)] if m]
        missing += [f"{tok_dir}/{m}" for m in [_missing_tokenizer_files(tok_dir)] if m]
        if missing:
            raise FileNotFoundError(
                f"{path} is not a text encoder folder: missing {'; '.join(missing)}. Expected either "
                f"{subfolder}/ + {tokenizer_subfolder}/ subfolders (diffusers layout) or config.json, "
                "model.safetensors, vocab.json and merges.txt in one folder."
            )
        architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
        model_cls = (
            CLIPTextModelWithProjection if "CLIPTextModelWithProjection" in architectures else CLIPTextModel
        )
        model = model_cls.from_pretrained(str(model_dir))
        tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
        return cls(model, tokenizer, **kwargs)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def pooled_size(self) -> int:
        """Width of ``pooled``: the projection's for a model with one, else hidden_size."""
        if isinstance(self.model, CLIPTextModelWithProjection):
            return self.model.config.projection_dim
        return self.hidden_size

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """input_ids and attention_mask (B, max_length), padded with EOS and truncated."""
        return self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )

    def _encode_batch(self, texts: list[str], length: int) -> TextEmbeddings:
        tokens = self.tokenize(texts)
        input_ids = tokens["input_ids"].to(self.device)
        # No attention mask, as in SD: CLIP's causal attention keeps real tokens off the padding.
        out = self.model(input_ids=input_ids)
        pooled = out.text_embeds if isinstance(self.model, CLIPTextModelWithProjection) else out.pooler_output
        mask = tokens["attention_mask"].to(self.device).bool()
        return TextEmbeddings(hidden=out.last_hidden_state, pooled=pooled, mask=mask).head(length)


def load_embedded_text_encoder(**kwargs) -> FrozenTextEncoder:
    """The tiny text encoder shipped in idruid/assets/text_encoder (contrastively pretrained)."""
    if not EMBEDDED_TEXT_ENCODER.is_dir():
        raise FileNotFoundError(
            f"embedded text encoder not found at {EMBEDDED_TEXT_ENCODER}; "
            "build it with `python scripts/pretrain_text_encoder.py`"
        )
    return FrozenTextEncoder.from_pretrained(EMBEDDED_TEXT_ENCODER, **kwargs)


def load_text_encoder(spec: str | Path, **kwargs) -> FrozenTextEncoder | SD3TextEncoder:
    """The text encoder a spec names; ``kwargs`` go to the chosen class's ``from_pretrained``.

    - ``"embedded"``: the tiny shipped CLIP (``load_embedded_text_encoder``);
    - an SD3 folder in diffusers layout (has text_encoder_3/ or tokenizer_3/, or a model_index.json
      naming a StableDiffusion3 pipeline): ``SD3TextEncoder`` (CLIP-L + CLIP-G + T5);
    - an SD1.5 folder in diffusers layout (text_encoder/ + tokenizer/) or a flat CLIP folder
      (config.json, weights, vocab.json, merges.txt): ``FrozenTextEncoder`` (one CLIP).
    """
    if str(spec) == "embedded":
        return load_embedded_text_encoder(**kwargs)
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"text encoder {spec!r} is neither 'embedded' nor an existing folder")
    pipeline = _pipeline_class(path)
    if pipeline is not None and not pipeline.startswith(("StableDiffusion3", "StableDiffusionPipeline")):
        raise FileNotFoundError(
            f"{path} is a {pipeline} folder: no text encoder idruid reads (it reads SD3's three encoders "
            "and SD1.5's CLIP); give model.text_encoder a folder of those, or use this folder's backbone"
        )
    if _is_sd3_folder(path):
        from .sd3_text import SD3TextEncoder

        return SD3TextEncoder.from_pretrained(path, **kwargs)
    if (path / "text_encoder").is_dir() or (path / "config.json").is_file():
        return FrozenTextEncoder.from_pretrained(path, **kwargs)
    raise FileNotFoundError(
        f"{path} holds no text encoder: expected text_encoder_3/ (SD3 diffusers folder), text_encoder/ "
        "(SD1.5 diffusers folder) or config.json (a flat CLIP folder)"
    )


def _pipeline_class(path: Path) -> str | None:
    """The pipeline class a diffusers folder's model_index.json names (None without one)."""
    index = path / "model_index.json"
    if not index.is_file():
        return None
    return str(json.loads(index.read_text()).get("_class_name", ""))


def _is_sd3_folder(path: Path) -> bool:
    if (path / "text_encoder_3").is_dir() or (path / "tokenizer_3").is_dir():
        return True
    return (_pipeline_class(path) or "").startswith("StableDiffusion3")
