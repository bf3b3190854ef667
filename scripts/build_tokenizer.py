"""Build idruid's embedded tokenizer: a tiny CLIP byte-level BPE vocabulary.

Writes ``src/idruid/assets/tokenizer/`` (vocab.json, merges.txt, tokenizer_config.json,
special_tokens_map.json) in the format of OpenAI CLIP's tokenizer, so that
``transformers.CLIPTokenizer.from_pretrained(dir)`` loads it offline:

- ids 0-255 are the 256 byte-level symbols (GPT-2's ``bytes_to_unicode`` order), ids 256-511
  the same symbols with the ``</w>`` end-of-word suffix, then one token per merge, then
  ``<|startoftext|>`` and ``<|endoftext|>`` last, as in CLIP's 49408-token vocabulary;
- the merges are learnt by plain BPE training on a word list (the shapes world's caption
  vocabulary plus ~300 common English words) until every listed word is a single token,
  so any other word still falls back to sub-word or byte tokens.

The output is deterministic (ties between equally frequent pairs break lexicographically).

    python scripts/build_tokenizer.py [--out src/idruid/assets/tokenizer]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SUFFIX = "</w>"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "idruid" / "assets" / "tokenizer"
MODEL_MAX_LENGTH = 40  # the tiny text encoder's max_position_embeddings

# ~300 common English words: function words, colours, shapes, picture words, scene words.
COMMON_WORDS = """
a an the this that these those some any each every all both no not
of in on at to from with without by for about above below under over between among
near next beside behind inside outside into onto upon around across along against through
left right top bottom center centre middle front back side corner edge
and or but with as than then there here where which who what when how why
is are was were be been being has have had do does did can could will would should may might
it its they them their he she his her we our you your i me my one two three four five six
seven eight nine ten first second third other another more most many few several single
big small large little tiny huge tall short long wide narrow thin thick round flat
bright dark light pale deep vivid soft plain simple clean
red orange yellow green blue purple violet pink brown black white gray grey
gold silver cyan magenta beige teal navy maroon olive colored coloured color colour
circle circles square squares triangle triangles rectangle rectangles star stars disk
disc ball box diamond oval ellipse hexagon shape shapes object objects figure figures
dot dots dotted stripe stripes striped solid pattern patterned texture textured filled
line lines grid checkered spotted smooth rough
photo photograph picture image painting drawing sketch illustration render rendering
art artwork scene view background foreground style cartoon realistic digital
high quality detailed detail sharp blurry beautiful clear
man woman person people child dog cat bird car tree house sky grass water road table
chair cup bottle book street room city sun
made shown showing shows looks look has having sits sitting lies lying placed set
covered features featuring contains containing appears appearing
very quite just also only like well
""".split()

# GPT-2 / CLIP byte-to-unicode table: printable bytes map to themselves, the rest to 256+.
_PRINTABLE = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
_PRINTABLE += list(range(ord("®"), ord("ÿ") + 1))


def bytes_to_unicode() -> dict[int, str]:
    bs = list(_PRINTABLE)
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def caption_vocabulary() -> list[str]:
    """Every word the shapes world's captions can contain."""
    from idruid.data import shapes

    if hasattr(shapes, "caption_words"):
        return sorted(shapes.caption_words())
    return sorted(shapes.CAPTION_VOCABULARY)


def split_words(words: list[str]) -> list[str]:
    """The letter runs CLIP's pre-tokenizer would make of the words (lower case)."""
    out: set[str] = set()
    for word in words:
        out.update(re.findall(r"[^\W\d_]+", word.lower()))
    return sorted(out)


def symbols(word: str, byte_map: dict[int, str]) -> list[str]:
    chars = [byte_map[b] for b in word.encode("utf-8")]
    chars[-1] += SUFFIX
    return chars


def merge_pair(seq: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and (seq[i], seq[i + 1]) == pair:
            out.append(seq[i] + seq[i + 1])
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def train_bpe(words: list[str], byte_map: dict[int, str]) -> list[tuple[str, str]]:
    """Plain BPE training, each word counted once, until every word is one token."""
    segs = {w: symbols(w, byte_map) for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        counts: Counter[tuple[str, str]] = Counter()
        for seg in segs.values():
            for pair in zip(seg, seg[1:], strict=False):
                counts[pair] += 1
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for w, seg in segs.items():
            if len(seg) > 1:
                segs[w] = merge_pair(seg, best)


def build(out_dir: Path) -> dict:
    byte_map = bytes_to_unicode()
    words = split_words(COMMON_WORDS + caption_vocabulary())
    merges = train_bpe(words, byte_map)

    base = list(byte_map.values())
    vocab_list = base + [s + SUFFIX for s in base]
    seen = set(vocab_list)
    for a, b in merges:
        if a + b not in seen:
            vocab_list.append(a + b)
            seen.add(a + b)
    vocab_list += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    check(out_dir, words)
    return {"words": len(words), "merges": len(merges), "vocab_size": len(vocab)}


def check(out_dir: Path, words: list[str]) -> None:
    """Every listed word must be one token once loaded by transformers' CLIPTokenizer."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(out_dir))
    split = [w for w in words if len(tok.tokenize(w)) != 1]
    if split:
        raise RuntimeError(f"words not single tokens: {split[:20]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    stats = build(args.out)
    print(f"wrote {args.out}: {stats}")


if __name__ == "__main__":
    main()
