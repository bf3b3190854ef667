"""Pretrain the embedded tiny text encoder with mini CLIP (scripts/mini_clip.py, beside this one).

Writes ``src/idruid/assets/text_encoder/``: config.json + model.safetensors (save_pretrained),
a copy of the tokenizer files from ``src/idruid/assets/tokenizer/`` (build them first with
scripts/build_tokenizer.py) and pretraining.json (settings and metrics). About 2-3 minutes
on 2 CPU cores.

    python scripts/pretrain_text_encoder.py [--steps 2500] [--seed 0] [--out DIR]
    python scripts/pretrain_text_encoder.py --random --out /tmp/random_text_encoder  # ablation
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mini_clip import build_random_text_encoder, pretrain_text_encoder

from idruid.models.text_encoder import EMBEDDED_TEXT_ENCODER


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=EMBEDDED_TEXT_ENCODER)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--probe-steps", type=int, default=500, help="0 skips the probe metrics")
    parser.add_argument("--random", action="store_true", help="write an untrained encoder instead")
    args = parser.parse_args()
    if args.random:
        print(f"wrote untrained text encoder to {build_random_text_encoder(args.out, args.seed)}")
        return
    metrics = pretrain_text_encoder(
        args.out, steps=args.steps, seed=args.seed, batch_size=args.batch_size, probe_steps=args.probe_steps
    )
    print(json.dumps(metrics, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
