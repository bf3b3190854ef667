"""SD3's three frozen text encoders as one ``encode(texts) -> TextEmbeddings`` (paper 3.1, SD3 backbone).

Stable Diffusion 3 reads a prompt with CLIP-L (``text_encoder``), CLIP-G (``text_encoder_2``), both
``CLIPTextModelWithProjection``, and a T5 encoder (``text_encoder_3``). The combination follows
diffusers' ``StableDiffusion3Pipeline.encode_prompt`` (our own code, same formula):

- CLIP token states are the penultimate hidden layer of each CLIP, tokenized to CLIP-L's
  ``model_max_length`` (77), with no attention mask (CLIP's causal attention);
- CLIP-L and CLIP-G states are concatenated on the feature axis and zero-padded to T5's width;
- T5's last hidden states (``t5_max_length`` tokens, 256 by default) follow them on the sequence axis:
  ``hidden`` is (B, 77 + t5_max_length, d_T5);
- ``pooled`` = cat(CLIP-L text_embeds, CLIP-G text_embeds).

``mask`` is True on real tokens: the CLIP part from the CLIP tokenizers' attention masks, the T5 part
from T5's. Without T5 (``use_t5=False``, which SD3 allows), its part is zeros with a False mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from idruid.model_dirs import CLIP_TOKENIZER, T5_TOKENIZER, TRANSFORMERS_MODEL, check_components

from .text_cache import CachedTextEncoder, TextEmbeddings, default_cache_size

CLIP_PARTS = (
    ("text_encoder", TRANSFORMERS_MODEL),
    ("text_encoder_2", TRANSFORMERS_MODEL),
    ("tokenizer", CLIP_TOKENIZER),
    ("tokenizer_2", CLIP_TOKENIZER),
)
T5_PARTS = (("text_encoder_3", TRANSFORMERS_MODEL), ("tokenizer_3", T5_TOKENIZER))


class SD3TextEncoder(CachedTextEncoder):
    """CLIP-L + CLIP-G + T5, frozen, with the same interface as FrozenTextEncoder."""

    def __init__(
        self,
        clip_l: CLIPTextModelWithProjection,
        tokenizer_l: CLIPTokenizer,
        clip_g: CLIPTextModelWithProjection,
        tokenizer_g: CLIPTokenizer,
        t5: T5EncoderModel | None,
        tokenizer_t5: T5TokenizerFast | None,
        t5_max_length: int = 256,
        t5_width: int | None = None,
        cache_size: int | None = None,
    ):
        """t5 = tokenizer_t5 = None runs without T5 (zeros of width ``t5_width`` in its place).
        cache_size: distinct texts kept; None: as many as fit in CACHE_BYTES (about 48 at SD3's
        sizes in float32, each row being 333 x 4096 numbers)."""
        for name, model, tokenizer in (("CLIP-L", clip_l, tokenizer_l), ("CLIP-G", clip_g, tokenizer_g)):
            if not isinstance(model, CLIPTextModelWithProjection):
                raise TypeError(
                    f"SD3's {name} must be a CLIPTextModelWithProjection, got {type(model).__name__}"
                )
            if len(tokenizer) > model.config.vocab_size:
                vocab = model.config.vocab_size
                raise ValueError(f"{name} tokenizer has {len(tokenizer)} tokens but the model only {vocab}")
        if (t5 is None) != (tokenizer_t5 is None):
            raise ValueError("pass both the T5 model and its tokenizer, or neither (no T5)")
        if t5 is not None:
            if t5_width is not None and t5_width != t5.config.d_model:
                raise ValueError(
                    f"t5_width {t5_width} differs from the T5 model's d_model {t5.config.d_model}"
                )
            t5_width = t5.config.d_model
        elif t5_width is None:
            raise ValueError("without T5, t5_width (the joint attention width) is required")
        clip_width = clip_l.config.hidden_size + clip_g.config.hidden_size
        if clip_width > t5_width:
            raise ValueError(f"CLIP-L + CLIP-G width {clip_width} exceeds the T5 width {t5_width}")
        # As diffusers: CLIP-L's tokenizer length for both CLIPs (77 in SD3).
        clip_max_length = min(
            tokenizer_l.model_max_length,
            clip_l.config.max_position_embeddings,
            clip_g.config.max_position_embeddings,
        )
        pooled_size = clip_l.config.projection_dim + clip_g.config.projection_dim
        length = clip_max_length + t5_max_length
        if cache_size is None:
            element_bytes = clip_l.dtype.itemsize
            cache_size = default_cache_size(length * (t5_width + 1) + pooled_size, element_bytes)
        super().__init__(cache_size)
        self.clip_l, self.clip_g, self.t5 = clip_l, clip_g, t5
        self.tokenizer_l, self.tokenizer_g, self.tokenizer_t5 = tokenizer_l, tokenizer_g, tokenizer_t5
        self.clip_max_length = clip_max_length
        self.t5_max_length = t5_max_length
        self._hidden_size = t5_width
        self._pooled_size = pooled_size
        self._freeze()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        t5_max_length: int = 256,
        use_t5: bool = True,
        dtype: torch.dtype | None = None,
        cache_size: int | None = None,
    ) -> SD3TextEncoder:
        """Load from a local SD3 folder in diffusers layout (text_encoder{,_2,_3}/, tokenizer{,_2,_3}/).

        use_t5=False skips loading T5 (its 4.7B parameters): the T5 part is zeros of the width
        in text_encoder_3/config.json, else transformer/config.json's joint_attention_dim.
        dtype: of all three models (None: as saved)."""
        root = check_components(path, CLIP_PARTS + (T5_PARTS if use_t5 else ()), "SD3 text encoder")
        load_kwargs = {} if dtype is None else {"dtype": dtype}
        clips = []
        for subfolder in ("text_encoder", "text_encoder_2"):
            architectures = json.loads((root / subfolder / "config.json").read_text()).get("architectures")
            if architectures and "CLIPTextModelWithProjection" not in architectures:
                raise ValueError(
                    f"{root / subfolder} holds {architectures}; SD3 needs CLIPTextModelWithProjection"
                )
            clips.append(CLIPTextModelWithProjection.from_pretrained(str(root / subfolder), **load_kwargs))
        tokenizers = [CLIPTokenizer.from_pretrained(str(root / sub)) for sub in ("tokenizer", "tokenizer_2")]
        t5 = tokenizer_t5 = t5_width = None
        if use_t5:
            t5 = T5EncoderModel.from_pretrained(str(root / "text_encoder_3"), **load_kwargs)
            tokenizer_t5 = T5TokenizerFast.from_pretrained(str(root / "tokenizer_3"))
        else:
            t5_width = _t5_width_from_configs(root)
        return cls(
            clips[0],
            tokenizers[0],
            clips[1],
            tokenizers[1],
            t5,
            tokenizer_t5,
            t5_max_length=t5_max_length,
            t5_width=t5_width,
            cache_size=cache_size,
        )

    @property
    def hidden_size(self) -> int:
        """D: T5's width (4096 in SD3), the transformer's joint_attention_dim."""
        return self._hidden_size

    @property
    def pooled_size(self) -> int:
        """P: CLIP-L's projection + CLIP-G's (768 + 1280 in SD3)."""
        return self._pooled_size

    @property
    def max_length(self) -> int:
        """L: CLIP tokens + T5 tokens (77 + 256 by default)."""
        return self.clip_max_length + self.t5_max_length

    def _encode_batch(self, texts: list[str], length: int) -> TextEmbeddings:
        """The first ``length`` tokens: T5 runs only when they reach past the CLIP tokens (instance
        captions at caption_max_length=0 need CLIP's pooled vectors alone, not a T5-XXL pass)."""
        device, dtype = self.device, self.clip_l.dtype
        states, pooled, clip_mask = [], [], None
        for model, tokenizer in ((self.clip_l, self.tokenizer_l), (self.clip_g, self.tokenizer_g)):
            tokens = tokenizer(
                texts,
                padding="max_length",
                max_length=self.clip_max_length,
                truncation=True,
                return_tensors="pt",
            )
            out = model(input_ids=tokens["input_ids"].to(device), output_hidden_states=True)
            states.append(out.hidden_states[-2].to(dtype))  # (B, 77, d_clip), penultimate layer
            pooled.append(out.text_embeds.to(dtype))
            mask = tokens["attention_mask"].bool()
            clip_mask = mask if clip_mask is None else clip_mask | mask
        clip_hidden = torch.cat(states, dim=-1)
        clip_hidden = F.pad(clip_hidden, (0, self.hidden_size - clip_hidden.shape[-1]))  # (B, 77, D)
        clip = TextEmbeddings(hidden=clip_hidden, pooled=torch.cat(pooled, dim=-1), mask=clip_mask.to(device))
        if length <= self.clip_max_length:
            return clip.head(length)
        t5_hidden, t5_mask = self._encode_t5(texts)
        return TextEmbeddings(
            hidden=torch.cat([clip.hidden, t5_hidden.to(device, dtype)], dim=1),  # (B, L, D)
            pooled=clip.pooled,  # (B, P)
            mask=torch.cat([clip.mask, t5_mask.to(device)], dim=1),  # (B, L)
        ).head(length)

    def _encode_t5(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """T5's last hidden states (B, t5_max_length, D) and mask; zeros and False without T5."""
        shape = (len(texts), self.t5_max_length)
        if self.t5 is None:
            return torch.zeros(*shape, self.hidden_size), torch.zeros(shape, dtype=torch.bool)
        tokens = self.tokenizer_t5(
            texts, padding="max_length", max_length=self.t5_max_length, truncation=True, return_tensors="pt"
        )
        # No attention mask, as in diffusers: padding tokens are encoded like the others.
        hidden = self.t5(input_ids=tokens["input_ids"].to(self.t5.device)).last_hidden_state
        return hidden, tokens["attention_mask"].bool()


def _t5_width_from_configs(root: Path) -> int:
    """T5's width without loading it: text_encoder_3's d_model, else the transformer's joint_attention_dim."""
    for config_file, key in (
        (root / "text_encoder_3" / "config.json", "d_model"),
        (root / "transformer" / "config.json", "joint_attention_dim"),
    ):
        if config_file.is_file():
            return int(json.loads(config_file.read_text())[key])
    raise FileNotFoundError(
        f"without T5, the T5 width is read from text_encoder_3/config.json or transformer/config.json; "
        f"{root} has neither"
    )
