"""Tiny random models saved like real checkpoints, shared by several test files.

- a tiny GroundingDINO (Swin + BERT) whose vocabulary holds the special ids GroundingDINO
  hard-codes: the detector of COCO-MIG's scorer and of the RL reward;
- a tiny SAM (64 px input): COCO-MIG's segmenter;
- a tiny Llava (CLIP vision tower + Llama) with a word-level tokenizer and a Llava-1.5 chat
  template: the VLM judge of LayoutSAM-eval (idruid.judges.VlmJudge).

Each is loaded by the user-facing code as a real local folder would be. Random weights test
plumbing only.
"""

import re
from collections.abc import Iterable
from pathlib import Path

import torch

from idruid.judges import ATTRIBUTES, attribute_question, spatial_question

LLAVA_IMAGE_SIZE, LLAVA_PATCH = 16, 8  # the tiny CLIP tower sees 2 x 2 patches (+ CLS, dropped)
# Llava-1.5's turn format, written out by hand so tests can format prompts directly.
LLAVA_TEMPLATE = (
    "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def judge_words(captions: Iterable[str]) -> list[str]:
    """Every piece the judge's questions about ``captions`` split into, so few tokens are <unk>."""
    captions = list(captions)
    texts = [spatial_question(c) for c in captions]
    texts += [attribute_question(a, c, c) for a in ATTRIBUTES for c in captions]
    texts += ["USER: ASSISTANT: Yes No"]
    return sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]+", t)})


def llava_tokenizer(words: list[str]):
    """A word-level fast tokenizer over ``words`` with <pad>, <unk> and the <image> token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<image>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


def llava_processor(tokenizer, chat_template: str | None = LLAVA_TEMPLATE):
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    size = LLAVA_IMAGE_SIZE
    return LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ),
        tokenizer=tokenizer,
        patch_size=LLAVA_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )


def build_tiny_llava(path: Path, captions: Iterable[str], seed: int = 0) -> Path:
    """model.save_pretrained + processor.save_pretrained of a tiny random Llava into ``path``,
    its vocabulary holding the words of the judge's questions about ``captions``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    processor = llava_processor(llava_tokenizer(judge_words(captions)))
    tokenizer = processor.tokenizer
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=LLAVA_IMAGE_SIZE,
            patch_size=LLAVA_PATCH,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=tokenizer.pad_token_id,
            initializer_range=0.5,  # large weights: answers that vary with the crop and question
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(LLAVA_IMAGE_SIZE // LLAVA_PATCH) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def grounding_dino_vocab(words: list[str]) -> list[str]:
    """A BERT vocabulary whose special ids are the ones GroundingDINO hard-codes:
    [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, "."=1012, "?"=1029, fillers in between, then words."""
    vocab = [f"[unused{i}]" for i in range(1040)]
    for index, token in {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}.items():
        vocab[index] = token
    vocab[1012], vocab[1029] = ".", "?"
    return vocab + list(words)


def build_tiny_grounding_dino(
    path: Path, words: list[str], num_queries: int = 12, max_text_len: int = 32
) -> Path:
    """A random GroundingDINO with 64 px input in ``path/model`` (model + processor save_pretrained)."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        GroundingDinoProcessor,
        SwinConfig,
    )

    vocab = grounding_dino_vocab(words)
    vocab_dir = Path(path) / "vocab"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    (vocab_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # BertTokenizer(vocab_file=...) ignores the file in transformers 5; from_pretrained reads it.
    tokenizer = BertTokenizer.from_pretrained(vocab_dir)
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 64})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, out_indices=[2, 3, 4]
        ),
        text_config=BertConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=max_text_len,
        ),
        d_model=32,  # GroupNorm(32, d_model) in the input projections
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=num_queries,
        num_feature_levels=3,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=max_text_len,
    )
    torch.manual_seed(0)
    model_dir = Path(path) / "model"
    GroundingDinoForObjectDetection(config).save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    return model_dir


def build_tiny_sam(path: Path) -> Path:
    """A SAM with 64 px input, 8 px patches and 16-wide layers, saved as from_pretrained reads it."""
    from transformers import (
        SamConfig,
        SamImageProcessorPil,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    config = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=16,
            output_channels=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=64,
            patch_size=8,
            window_size=4,
            global_attn_indexes=[1],
            num_pos_feats=8,
            mlp_dim=32,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=16
        ),
    )
    torch.manual_seed(0)
    model = SamModel(config)
    image_processor = SamImageProcessorPil(
        size={"longest_edge": 64},
        pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16},
    )
    model.save_pretrained(path)
    SamProcessor(image_processor=image_processor).save_pretrained(path)
    return Path(path)
