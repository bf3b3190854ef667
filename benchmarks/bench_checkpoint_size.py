"""Size of a resumable training checkpoint at SD3-medium's size, before and after it was cut to
what training changes, against the exported idruid model. Counted on the ``meta`` device (no
memory, no download): idruid's model around SD3-medium's MM-DiT (the sd3-medium preset's
``share_query``, built as bench_architectures.py builds it) and SD3-medium's three text encoders
at their published sizes (CLIP-L, CLIP-G, T5-XXL encoder), all in fp32 as training holds them.

    python benchmarks/bench_checkpoint_size.py

Before: accelerate's ``save_state`` wrote the whole model's state dict (the frozen backbone and
text encoders included), AdamW's two moments and the EMA of the trainable weights. After
(``train_state.save_trainable_state_only``): the trainable state dict only, the same optimiser and
EMA. Exported model: ``checkpoint.save_checkpoint`` (the trainable state dict). Results go into
BENCHMARKS.md by hand.
"""

from __future__ import annotations

import torch
from bench_architectures import layout_model
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

GIB = 2**30
FP32 = 4


def text_encoders() -> dict[str, torch.nn.Module]:
    """SD3-medium's text encoders at the sizes of its text_encoder{,_2,_3}/config.json."""
    clip_l = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, projection_dim=768)  # fmt: skip
    clip_g = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                            num_attention_heads=20, projection_dim=1280, hidden_act="gelu")  # fmt: skip
    t5 = T5Config(d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64, vocab_size=32128,
                  feed_forward_proj="gated-gelu")  # fmt: skip
    return {
        "CLIP-L": CLIPTextModelWithProjection(clip_l),
        "CLIP-G": CLIPTextModelWithProjection(clip_g),
        "T5-XXL encoder": T5EncoderModel(t5),
    }


def gib(size: int) -> str:
    return f"{size / GIB:.2f} GiB"


def nbytes(tensors) -> int:
    return sum(t.numel() * FP32 for t in tensors)


def main() -> None:
    with torch.device("meta"):
        model = layout_model(share_query=True)
        encoders = text_encoders()
    model.config.base_model = "SD3_DIR"  # as the sd3-medium preset runs: the backbone from the folder
    trainable = model.trainable_state_dict()
    params = [
        p
        for n, p in model.named_parameters()
        if n in trainable and n.startswith(("adapter.", "transformer."))
    ]
    frozen_backbone = nbytes(v for k, v in model.state_dict().items() if k not in trainable)
    text = {name: nbytes(m.state_dict().values()) for name, m in encoders.items()}
    weights = nbytes(trainable.values())
    optimiser = 2 * nbytes(params)  # AdamW: exp_avg and exp_avg_sq per trainable parameter
    ema = nbytes(params)
    before = frozen_backbone + sum(text.values()) + weights + optimiser + ema
    after = weights + optimiser + ema
    rows = [
        ("frozen MM-DiT backbone", frozen_backbone, frozen_backbone, 0),
        *((f"text encoder {name}", size, size, 0) for name, size in text.items()),
        ("trainable weights (adapter + IDM)", weights, weights, weights),
        ("AdamW moments", optimiser, optimiser, 0),
        ("EMA of the trainable weights", ema, ema, 0),
    ]
    print("| part | size | before: in the resumable checkpoint | after | in the exported model |")
    print("|---|---|---|---|---|")
    for name, size, was, exported in rows:
        now = 0 if name.startswith(("frozen", "text")) else size
        print(f"| {name} | {gib(size)} | {gib(was)} | {gib(now)} | {gib(exported)} |")
    print(f"| **total** | | **{gib(before)}** | **{gib(after)}** | **{gib(weights)}** |")
    print(f"trainable parameters: {sum(p.numel() for p in params):,}")


if __name__ == "__main__":
    main()
