"""Tiny random models saved like real checkpoints, shared by several test files.

- a tiny GroundingDINO (Swin + BERT) whose vocabulary holds the special ids GroundingDINO
  hard-codes: the detector of COCO-MIG's scorer and of the RL reward;
- a tiny SAM (64 px input): COCO-MIG's segmenter;
- a tiny Llava (CLIP vision tower + Llama) with a word-level tokenizer and a Llava-1.5 chat
  template: the VLM judge of LayoutSAM-eval (idruid.scorers.vlm_judge.VlmJudge);
- complete SD3, SD1.5 and FLUX.1 (dev and schnell) folders in diffusers layout (pipeline
  save_pretrained): the base models of the backbones, their text encoders (idruid.models.sd3_text,
  idruid.models.flux_text) and VAEs (idruid.models.vae).

Each is loaded by the user-facing code as a real local folder would be. Random weights test
plumbing only.
"""

import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from idruid.scorers.vlm_judge import ATTRIBUTES, attribute_question, spatial_question

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


# the tiny SAM and SAM-HQ share their vision and prompt-encoder sizes
SAM_VISION = dict(
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
)
SAM_PROMPT = dict(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4)


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
        vision_config=SamVisionConfig(**SAM_VISION),
        prompt_encoder_config=SamPromptEncoderConfig(**SAM_PROMPT),
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


def build_tiny_sam_hq(path: Path) -> Path:
    """A SAM-HQ (the I-DRUID authors' COCO-MIG segmenter) at the tiny SAM's sizes."""
    from transformers import (
        SamHQConfig,
        SamHQMaskDecoderConfig,
        SamHQModel,
        SamHQProcessor,
        SamHQPromptEncoderConfig,
        SamHQVisionConfig,
        SamImageProcessorPil,
    )

    config = SamHQConfig(
        vision_config=SamHQVisionConfig(**SAM_VISION),
        prompt_encoder_config=SamHQPromptEncoderConfig(**SAM_PROMPT),
        mask_decoder_config=SamHQMaskDecoderConfig(
            hidden_size=16,
            mlp_dim=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            iou_head_hidden_dim=16,
            vit_dim=16,
        ),
    )
    torch.manual_seed(0)
    image_processor = SamImageProcessorPil(
        size={"longest_edge": 64},
        pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16},
    )
    SamHQModel(config).save_pretrained(path)
    SamHQProcessor(image_processor=image_processor).save_pretrained(path)
    return Path(path)


# ----------------------------------------------------------------------------- SD3 / SD1.5 folders

# the I-DRUID authors' architecture (models/druid_arch.py) at test size
TINY_DRUID = dict(
    sample_size=8,
    patch_size=2,
    in_channels=4,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=24,
    caption_projection_dim=32,
    pooled_projection_dim=20,
    out_channels=4,
    pos_embed_max_size=8,
)

CLIP_MAX_LENGTH = 77  # SD's CLIP tokenizers and position embeddings
T5_WORDS = (
    "a photo of the red green blue yellow white black circle square triangle cat dog on left right "
    "and with in striped dotted small large"
).split()


def tiny_clip_tokenizer(pad_token: str | None = None):
    """The embedded CLIP BPE tokenizer at SD's 77 tokens; SD3's tokenizer_2 pads with "!"."""
    from transformers import CLIPTokenizer

    from idruid.models.text_encoder import EMBEDDED_TOKENIZER

    kwargs = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer.from_pretrained(EMBEDDED_TOKENIZER, model_max_length=CLIP_MAX_LENGTH, **kwargs)


def bpe_tokenizer_files(folder: Path) -> None:
    """Replace transformers 5's tokenizer.json by vocab.json + merges.txt, the files real SD folders hold."""
    from idruid.models.text_encoder import EMBEDDED_TOKENIZER

    for name in ("vocab.json", "merges.txt"):
        shutil.copy(EMBEDDED_TOKENIZER / name, folder / name)
    (folder / "tokenizer.json").unlink()


def tiny_clip(tokenizer, hidden: int, projection: int | None, heads: int = 2, act: str = "quick_gelu"):
    """A 2-layer random CLIP text model (with projection when ``projection`` is given)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=projection or hidden,
        hidden_act=act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def tiny_t5_tokenizer():
    """A T5 (Unigram) tokenizer over T5_WORDS plus single letters, built without sentencepiece:
    <pad>=0, </s>=1, <unk>=2 as in T5, no sentinel tokens."""
    from transformers import T5TokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -5.0) for w in T5_WORDS]
    pieces += [(c, -10.0) for c in letters] + [("\u2581" + c, -9.0) for c in letters]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def tiny_t5(tokenizer, width: int = 96):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=width,
        d_kv=16,
        d_ff=2 * width,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as SD3's T5-XXL
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config)


def tiny_vae(
    latent_channels: int, scaling_factor: float, shift_factor: float | None, quant_conv: bool = True
):
    """A 2-level AutoencoderKL (downsample 2) with SD's normalisation constants in its config."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=quant_conv,
        use_post_quant_conv=quant_conv,
    )


def build_tiny_sd3_folder(path: Path, seed: int = 0) -> Path:
    """A complete random SD3 pipeline saved in diffusers layout (StableDiffusion3Pipeline.save_pretrained):
    CLIP-L (32 wide, projection 24), CLIP-G (48 wide, projection 40, tokenizer padding with "!"),
    T5 (96 wide, so the 80 CLIP features are zero-padded by 16), a 16-channel VAE with SD3's
    scaling and shift, a 2-layer MM-DiT and SD3's flow-matching scheduler config."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tokenizer, tokenizer_2, tokenizer_3 = tiny_clip_tokenizer(), tiny_clip_tokenizer("!"), tiny_t5_tokenizer()
    clip_l = tiny_clip(tokenizer, hidden=32, projection=24)
    clip_g = tiny_clip(tokenizer_2, hidden=48, projection=40, heads=3, act="gelu")
    t5 = tiny_t5(tokenizer_3, width=96)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=96,
        caption_projection_dim=32,
        pooled_projection_dim=24 + 40,
        pos_embed_max_size=16,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=tiny_vae(16, scaling_factor=1.5305, shift_factor=0.0609, quant_conv=False),
        text_encoder=clip_l,
        tokenizer=tokenizer,
        text_encoder_2=clip_g,
        tokenizer_2=tokenizer_2,
        text_encoder_3=t5,
        tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(path)
    for subfolder in ("tokenizer", "tokenizer_2"):
        bpe_tokenizer_files(Path(path) / subfolder)
    return Path(path)


def build_tiny_druid_folder(path: Path, seed: int = 0, **save_kwargs) -> Path:
    """The authors' transformer (2 layers) in their checkpoint-folder format, sized to run on the
    tiny SD3 folder of ``build_tiny_sd3_folder`` (16 latent channels, joint width 96, pooled 64)."""
    from idruid.models.druid_arch import DruidSD3Transformer
    from idruid.models.druid_weights import save_folder

    torch.manual_seed(seed)
    druid = DruidSD3Transformer(
        max_boxes=10, sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=96, caption_projection_dim=32,
        pooled_projection_dim=24 + 40, pos_embed_max_size=16,
    )  # fmt: skip
    return save_folder(druid, path, **save_kwargs)


def build_tiny_sd15_folder(path: Path, seed: int = 0) -> Path:
    """A complete random SD1.5 pipeline saved in diffusers layout (StableDiffusionPipeline.save_pretrained,
    no safety checker): CLIP-L without projection (32 wide), a 4-channel VAE with scaling 0.18215,
    a 3-level UNet (CrossAttnDown x2 + Down; Up + CrossAttnUp x2; cross-attention width 32) and
    SD1.5's PNDM scheduler config (scaled_linear 0.00085..0.012, 1000 steps, steps_offset 1)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    text_encoder = tiny_clip(tokenizer, hidden=32, projection=None)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,  # the number of heads (diffusers' legacy name)
        norm_num_groups=8,
    )
    scheduler = PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        prediction_type="epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(4, scaling_factor=0.18215, shift_factor=None),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    bpe_tokenizer_files(Path(path) / "tokenizer")
    return Path(path)


# the tiny SD3.5 transformers: SD3.5-medium's MMDiT-X (qk rms-norm, a second image-only attention
# in its first blocks: 13 of 24 there, 1 of 2 here) and SD3.5-large's MM-DiT (qk rms-norm only)
SD35_VARIANTS = {
    "medium": dict(qk_norm="rms_norm", dual_attention_layers=(0,)),
    "large": dict(qk_norm="rms_norm", dual_attention_layers=()),
}


def build_tiny_sd35_folder(path: Path, variant: str = "medium", seed: int = 0) -> Path:
    """A complete random SD3.5 pipeline (StableDiffusion3Pipeline.save_pretrained): the text
    encoders, VAE and scheduler of ``build_tiny_sd3_folder`` and a 2-layer MM-DiT with SD3.5's
    ``qk_norm`` and, for "medium", its dual attention in the first block."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    if variant not in SD35_VARIANTS:
        raise ValueError(f"variant '{variant}': expected one of {', '.join(SD35_VARIANTS)}")
    torch.manual_seed(seed)
    tokenizer, tokenizer_2, tokenizer_3 = tiny_clip_tokenizer(), tiny_clip_tokenizer("!"), tiny_t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=96, caption_projection_dim=32,
        pooled_projection_dim=24 + 40, pos_embed_max_size=16, **SD35_VARIANTS[variant],
    )  # fmt: skip
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=tiny_vae(16, scaling_factor=1.5305, shift_factor=0.0609, quant_conv=False),
        text_encoder=tiny_clip(tokenizer, hidden=32, projection=24),
        tokenizer=tokenizer,
        text_encoder_2=tiny_clip(tokenizer_2, hidden=48, projection=40, heads=3, act="gelu"),
        tokenizer_2=tokenizer_2,
        text_encoder_3=tiny_t5(tokenizer_3, width=96),
        tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(path)
    for subfolder in ("tokenizer", "tokenizer_2"):
        bpe_tokenizer_files(Path(path) / subfolder)
    return Path(path)


# ----------------------------------------------------------------------------- FLUX.1 folders

# FLUX.1's scheduler/scheduler_config.json: dev shifts by resolution, schnell does not
FLUX_DEV_SCHEDULER = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096,
)  # fmt: skip
FLUX_SCHNELL_SCHEDULER = {**FLUX_DEV_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}


def build_tiny_flux_folder(path: Path, guidance_embeds: bool, seed: int = 0) -> Path:
    """A complete random FLUX.1 pipeline saved in diffusers layout (FluxPipeline.save_pretrained):
    FLUX.1-dev's shape with ``guidance_embeds`` (its scheduler shifting by resolution), schnell's
    without (its scheduler at shift 1). CLIP-L without projection (32 wide: the pooled input),
    T5 (48 wide: the token input), a 16-channel VAE with FLUX's scaling 0.3611 and shift 0.1159
    and no quant convs, and a transformer of one double- and one single-stream block (2 heads of
    16, rotary axes 4 / 6 / 6) on 2x2-packed latents (64 channels)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=48, pooled_projection_dim=32,
        guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    scheduler = FLUX_DEV_SCHEDULER if guidance_embeds else FLUX_SCHNELL_SCHEDULER
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**scheduler),
        vae=tiny_vae(16, scaling_factor=0.3611, shift_factor=0.1159, quant_conv=False),
        text_encoder=tiny_clip(tokenizer, hidden=32, projection=None),
        tokenizer=tokenizer,
        text_encoder_2=tiny_t5(tokenizer_2, width=48),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(path)
    bpe_tokenizer_files(Path(path) / "tokenizer")
    return Path(path)
