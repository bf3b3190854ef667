"""FLUX.1's two frozen text encoders as one ``encode(texts) -> TextEmbeddings`` (FLUX backbone).

FLUX.1 reads a prompt with CLIP-L (``text_encoder``, a ``CLIPTextModel``) and a T5 encoder
(``text_encoder_2``). The combination follows diffusers' ``FluxPipeline.encode_prompt`` (our own
code, same formula):

- ``pooled``: CLIP-L's ``pooler_output`` (the EOS token's final state, 768 wide in FLUX.1; no
  projection), from the prompt tokenized to CLIP-L's ``model_max_length`` (77);
- ``hidden``: T5's last hidden states, the prompt tokenized and padded to the requested length
  (FluxPipeline's ``max_sequence_length``: 512 for FLUX.1-dev, 256 for schnell), with no
  attention mask. T5 attends to its padding, so the states depend on that length: the length an
  ``encode`` call asks for is the one T5 runs at, not a crop of a longer run;
- ``mask``: T5's attention mask (True on real tokens).

Instance captions at ``caption_max_length=0`` ask for no tokens: only CLIP-L runs (the pooled
embedding of the IDM's two-token path), never T5.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from idruid.model_dirs import CLIP_TOKENIZER, T5_TOKENIZER, TRANSFORMERS_MODEL, check_components

from .text_cache import CachedTextEncoder, TextEmbeddings, default_cache_size

CLIP_PARTS = (("text_encoder", TRANSFORMERS_MODEL), ("tokenizer", CLIP_TOKENIZER))
T5_PARTS = (("text_encoder_2", TRANSFORMERS_MODEL), ("tokenizer_2", T5_TOKENIZER))
T5_MAX_LENGTH = 512  # FluxPipeline refuses a longer max_sequence_length


class FluxTextEncoder(CachedTextEncoder):
    """CLIP-L (pooled) + T5 (token states), frozen, with the interface of FrozenTextEncoder."""

    def __init__(
        self,
        clip: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        t5: T5EncoderModel,
        tokenizer_t5: T5TokenizerFast,
        t5_max_length: int = T5_MAX_LENGTH,
        cache_size: int | None = None,
    ):
        """t5_max_length: the most tokens a prompt is read at (``max_length``). cache_size:
        distinct texts kept; None: as many as fit in CACHE_BYTES."""
        if not isinstance(clip, CLIPTextModel):
            raise TypeError(f"FLUX's CLIP-L must be a CLIPTextModel, got {type(clip).__name__}")
        if len(tokenizer) > clip.config.vocab_size:
            raise ValueError(
                f"CLIP-L tokenizer has {len(tokenizer)} tokens but the model only {clip.config.vocab_size}"
            )
        if not 0 < t5_max_length <= T5_MAX_LENGTH:
            raise ValueError(f"t5_max_length must be in 1..{T5_MAX_LENGTH}, got {t5_max_length}")
        width = t5.config.d_model
        if cache_size is None:
            cache_size = default_cache_size(t5_max_length * (width + 1) + clip.config.hidden_size)
        super().__init__(cache_size)
        self.clip, self.t5 = clip, t5
        self.tokenizer, self.tokenizer_t5 = tokenizer, tokenizer_t5
        # as FluxPipeline: the CLIP tokenizer's own length (77)
        self.clip_max_length = min(tokenizer.model_max_length, clip.config.max_position_embeddings)
        self.t5_max_length = t5_max_length
        self._freeze()

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype | None = None, cache_size: int | None = None
    ) -> FluxTextEncoder:
        """Load from a local FLUX.1 folder in diffusers layout (text_encoder{,_2}/, tokenizer{,_2}/)."""
        root = check_components(path, CLIP_PARTS + T5_PARTS, "FLUX.1 text encoder")
        architectures = json.loads((root / "text_encoder" / "config.json").read_text()).get("architectures")
        if architectures and "CLIPTextModel" not in architectures:
            raise ValueError(f"{root / 'text_encoder'} holds {architectures}; FLUX.1 needs CLIPTextModel")
        kwargs = {} if dtype is None else {"dtype": dtype}
        return cls(
            CLIPTextModel.from_pretrained(str(root / "text_encoder"), **kwargs),
            CLIPTokenizer.from_pretrained(str(root / "tokenizer")),
            T5EncoderModel.from_pretrained(str(root / "text_encoder_2"), **kwargs),
            T5TokenizerFast.from_pretrained(str(root / "tokenizer_2")),
            cache_size=cache_size,
        )

    @property
    def hidden_size(self) -> int:
        """D: T5's width (4096 in FLUX.1), the transformer's joint_attention_dim."""
        return self.t5.config.d_model

    @property
    def pooled_size(self) -> int:
        """P: CLIP-L's width (768 in FLUX.1), the transformer's pooled_projection_dim."""
        return self.clip.config.hidden_size

    @property
    def max_length(self) -> int:
        """L: the most T5 tokens a text is read at."""
        return self.t5_max_length

    def _encode_batch(self, texts: list[str], length: int) -> TextEmbeddings:
        """CLIP-L's pooled embedding, and T5 run at ``length`` tokens (none: T5 does not run)."""
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.clip_max_length, truncation=True, return_tensors="pt"
        )
        pooled = self.clip(input_ids=tokens["input_ids"].to(self.clip.device)).pooler_output
        if length == 0:
            hidden = pooled.new_zeros(len(texts), 0, self.hidden_size)
            return TextEmbeddings(
                hidden=hidden, pooled=pooled, mask=torch.zeros(len(texts), 0, dtype=torch.bool)
            )
        words = self.tokenizer_t5(
            texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )
        # no attention mask, as in FluxPipeline: T5 reads its padding too
        hidden = self.t5(input_ids=words["input_ids"].to(self.t5.device)).last_hidden_state
        mask = words["attention_mask"].bool().to(hidden.device)
        return TextEmbeddings(hidden=hidden.to(pooled.dtype), pooled=pooled, mask=mask)
