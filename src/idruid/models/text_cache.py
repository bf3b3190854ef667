"""What every frozen text encoder shares (paper 3.1): the embeddings it returns (``TextEmbeddings``)
and ``CachedTextEncoder``, the base class with the per-text LRU cache, freezing and ``encode``.

Below both encoders, the CLIP one (idruid.models.text_encoder, which also picks the encoder for a
spec) and SD3's three (idruid.models.sd3_text), so that neither imports the other to share it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

CACHE_BYTES = 256 * 2**20  # default memory for cached embeddings (float32)


@dataclass
class TextEmbeddings:
    hidden: Tensor  # (B, L, D) token states, padded to max_length
    pooled: Tensor  # (B, P) EOS state (or its projection)
    mask: Tensor  # (B, L) bool, True on real tokens (BOS, words, EOS)

    def head(self, length: int) -> TextEmbeddings:
        """The first ``length`` tokens (copied, so that a cached row does not hold the rest)."""
        return TextEmbeddings(
            hidden=self.hidden[:, :length].contiguous(),
            pooled=self.pooled,
            mask=self.mask[:, :length].contiguous(),
        )


def default_cache_size(row_elements: int, element_bytes: int = 4) -> int:
    """How many cached rows of ``row_elements`` numbers fit in CACHE_BYTES."""
    return CACHE_BYTES // (row_elements * element_bytes)


class CachedTextEncoder(nn.Module):
    """Base of the frozen text encoders: always in eval mode, no trainable parameters, and an
    LRU cache of one (hidden, pooled, mask) row per distinct text around ``_encode_batch``.

    Subclasses implement ``_encode_batch(texts, length) -> TextEmbeddings`` (the first ``length``
    tokens; an encoder may skip a model that only later tokens need) and the properties
    ``hidden_size``, ``pooled_size`` and ``max_length``, and call ``_freeze()`` at the end of
    ``__init__``."""

    def __init__(self, cache_size: int):
        super().__init__()
        self.cache_size = cache_size  # distinct texts kept; 0 disables the cache
        self._cache: OrderedDict[tuple[str, int], tuple[Tensor, Tensor, Tensor]] = OrderedDict()

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def _encode_batch(self, texts: list[str], length: int) -> TextEmbeddings:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def train(self, mode: bool = True) -> CachedTextEncoder:
        """Always eval mode (frozen): ``train()`` is a no-op."""
        return super().train(False)

    def clear_cache(self) -> None:
        self._cache.clear()

    @torch.no_grad()
    def encode(
        self, texts: Sequence[str], use_cache: bool = True, length: int | None = None
    ) -> TextEmbeddings:
        """Embed ``texts``; with the cache, only texts not seen before go through the model.

        length: how many leading tokens of ``hidden`` and ``mask`` the caller uses (None: all
        ``max_length``). Instance captions need few or none (only ``pooled`` at
        caption_max_length=0), and SD3 then skips T5 (models/sd3_text.py)."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of strings; wrap a single text in a list")
        texts = list(texts)
        length = self.max_length if length is None else min(length, self.max_length)
        if not use_cache or self.cache_size <= 0:
            return self._encode_batch(texts, length)
        keys = [(t, length) for t in texts]
        misses = [k for k in dict.fromkeys(keys) if k not in self._cache]
        fresh: dict[tuple[str, int], tuple[Tensor, Tensor, Tensor]] = {}
        if misses:
            out = self._encode_batch([t for t, _ in misses], length)
            fresh = {k: (out.hidden[i], out.pooled[i], out.mask[i]) for i, k in enumerate(misses)}
        rows = [fresh[k] if k in fresh else self._cache[k] for k in keys]
        for k in keys:
            if k in fresh:
                self._cache[k] = fresh[k]
            self._cache.move_to_end(k)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        device = self.device
        hidden, pooled, mask = (torch.stack(parts).to(device) for parts in zip(*rows, strict=True))
        return TextEmbeddings(hidden=hidden, pooled=pooled, mask=mask)

    def forward(self, texts: Sequence[str]) -> TextEmbeddings:
        return self.encode(texts)
