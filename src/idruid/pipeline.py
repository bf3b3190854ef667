"""idruid as a diffusers pipeline: ``IDruidPipeline`` over the one sampling loop (idruid.sampling).

    pipe = IDruidPipeline.from_pretrained()             # the embedded model; or a checkpoint folder
    image = pipe("a red circle and a blue square", ["a red circle", "a blue square"],
                 [[0.1, 0.1, 0.45, 0.45], [0.55, 0.5, 0.9, 0.9]]).images[0]

Components. The pipeline registers two: ``model``, the idruid layout model, and ``scheduler``.
The model is one ``nn.Module`` on purpose: its forward ties the backbone (SD3 transformer or
SD1.5 UNet, with the IDM attention processors set inside it) to the layout adapter, which is
a sibling of the backbone, and its text encoder and codec are idruid's own wrappers (the
embedded mini-CLIP, SD3's three encoders behind one cache; pixels, space-to-depth or a VAE).
Registered apart they could not be saved or loaded by diffusers' loaders either, so the parts
are reachable as properties (``transformer`` / ``unet``, ``text_encoder``, ``vae``) but
``model`` is what is saved, offloaded and cast. A saved pipeline folder holds ``model/`` (an
idruid checkpoint: ``idruid.json`` + ``model.safetensors``, what idruid trains; a model on a
base folder records that folder's path), ``scheduler/`` and ``model_index.json``.

Noise. Image k of a call (prompt-major: the images of prompt 0, then of prompt 1, ...)
starts from one ``torch.randn`` of the latent shape, as idruid's per-layout noise does: drawn
from ``generator[k]`` for a list of generators, from ``generator`` in turn for one generator
(so ``torch.Generator().manual_seed(S)`` and one image give the image ``idruid generate``
makes for that layout with ``"seed": S``), and with no generator from the layout's own seed
(+ j for its j-th image), else from torch's global generator.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from PIL import Image

from .checkpoint import save_checkpoint
from .config import SamplingSettings
from .errors import CheckpointError, LayoutError
from .layout import Layout, layout_from_dict
from .loader import open_model
from .sampling import sample, seeded_noise, to_uint8

EMBEDDED_NAMES = ("embedded", "idruid/shapes")  # names of the embedded model for from_pretrained
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# Written next to a saved pipeline so that diffusers' own DiffusionPipeline.from_pretrained(DIR,
# trust_remote_code=True) finds idruid's classes (diffusers' custom pipeline / component files).
PIPELINE_FILE = '''"""Written by idruid's IDruidPipeline.save_pretrained, for DiffusionPipeline."""
from idruid.pipeline import IDruidPipeline  # noqa: F401
'''
COMPONENT_FILE = '''"""Written by idruid's IDruidPipeline.save_pretrained: loads this idruid checkpoint."""
from idruid.pipeline import IDruidCheckpoint

{name} = IDruidCheckpoint
'''


class IDruidCheckpoint(torch.nn.Module):
    """diffusers' loader hook for the ``model/`` folder of a saved pipeline. diffusers loads a
    component with ``from_pretrained`` of the class that the folder's ``idruid.py`` names, and
    passes ``torch_dtype`` to ``nn.Module`` classes only: hence a module that is never built."""

    @classmethod
    def from_pretrained(cls, path, torch_dtype: torch.dtype | None = None, **kwargs):
        model, _ = open_model(path)
        return model if torch_dtype is None else model.to(torch_dtype)


class IDruidPipeline(DiffusionPipeline):
    """Layout-to-image generation with an idruid model: global prompt, instance captions
    (``phrases``) and one box each.

    ``scheduler``: a diffusers scheduler, ``FlowMatchEulerDiscreteScheduler`` for flow models
    (SD3, FLUX and the embedded model), ``DDIMScheduler`` for eps models (SD1.5). It gives the
    time grid: the sigmas (flow) or timesteps (eps) of ``scheduler.set_timesteps(steps)`` (FLUX's
    process calls it as FluxPipeline does: its sigmas and the resolution's ``mu``). The update
    stays idruid's (Euler on the flow ODE, DDIM with eta = 0 on the model's own alpha_bar), so
    swapping the scheduler changes where the steps fall, not how a step is taken: another
    ``shift``, Karras or exponential sigmas of ``FlowMatchEulerDiscreteScheduler``, another
    ``timestep_spacing`` of ``DDIMScheduler``. A scheduler whose grid is not steps + 1 long
    (Heun's doubled steps) is refused. The flow scheduler's ``shift`` replaces the model's
    ``shift`` setting; the loaded one is built from it.

    ``sampling``: the model's SamplingSettings as a dict (what a checkpoint stores); ``__call__``
    takes its settings from there when an argument is None.
    """

    model_cpu_offload_seq = "model"
    _callback_tensor_inputs = ["latents"]

    # no annotations: diffusers (0.35) type-checks __init__'s arguments and cannot read string ones
    def __init__(self, model, scheduler, sampling=None):
        super().__init__()
        self.register_modules(model=model, scheduler=scheduler)
        self.register_to_config(sampling=SamplingSettings.from_dict(sampling).to_dict())

    # ------------------------------------------------------------------ parts of the model
    @property
    def sampling(self) -> SamplingSettings:
        """The sampling settings ``__call__`` starts from (the checkpoint's)."""
        return SamplingSettings.from_dict(self.config.sampling)

    @property
    def transformer(self):
        """The SD3 transformer with the IDM processors (flow models); None for a UNet."""
        return self.model.backbone if self.model.backbone_attr == "transformer" else None

    @property
    def unet(self):
        """The SD1.5 UNet with the IDM processors (eps models); None for a transformer."""
        return self.model.backbone if self.model.backbone_attr == "unet" else None

    @property
    def text_encoder(self):
        """idruid's frozen text encoder (models/text_encoder.py, models/sd3_text.py)."""
        return self.model.text_encoder

    @property
    def vae(self):
        """The codec between images and latents (models/vae.py: pixels, space-to-depth or a VAE)."""
        return self.model.codec

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_model(cls, model, sampling: SamplingSettings | None = None) -> IDruidPipeline:
        """A pipeline around a loaded idruid model, with its process's own scheduler."""
        sampling = sampling or SamplingSettings()
        scheduler = model.process.make_scheduler(sampling.shift if model.prediction_type == "flow" else 1.0)
        return cls(model=model, scheduler=scheduler, sampling=sampling.to_dict())

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path | None = None,
        torch_dtype: torch.dtype | None = None,
        base_model: str | Path | None = None,
        scheduler=None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> IDruidPipeline:
        """Load a folder written by ``save_pretrained``, an idruid checkpoint folder, the I-DRUID
        authors' checkpoint folder (``base_model``: an SD3 folder, required), or the embedded
        model (None, or a name of ``EMBEDDED_NAMES``). ``base_model``: where the base folder of a
        checkpoint trained on one lives now; ``scheduler`` replaces the saved one;
        ``dtype`` is ``torch_dtype``'s newer diffusers name."""
        name = pretrained_model_name_or_path
        folder = None if name is None or str(name) in EMBEDDED_NAMES else Path(name)
        if folder is not None and not folder.is_dir():
            raise CheckpointError(
                f"'{name}': no such folder (a saved pipeline or idruid checkpoint folder, or one of "
                f"{', '.join(EMBEDDED_NAMES)} for the embedded model)"
            )
        index_file = None if folder is None else folder / "model_index.json"
        if index_file is not None and index_file.is_file():  # a saved pipeline
            index = json.loads(index_file.read_text())
            model, _ = open_model(folder / "model", base_model)
            sampling = SamplingSettings.from_dict(index.get("sampling"))
            if scheduler is None:
                import diffusers

                scheduler_class = getattr(diffusers, index["scheduler"][1])
                scheduler = scheduler_class.from_pretrained(folder / "scheduler")
        else:  # a checkpoint folder of any format, or the embedded model
            model, sampling = open_model(folder, base_model)
        pipe = cls.from_model(model, sampling)
        if scheduler is not None:
            pipe.scheduler = scheduler
        if device is not None:
            pipe.to(device)
        if (dtype or torch_dtype) is not None:
            pipe.to(dtype or torch_dtype)
        return pipe

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """Write ``model/`` (an idruid checkpoint, which ``idruid generate --checkpoint`` also
        reads), ``scheduler/`` and ``model_index.json``; ``kwargs`` (diffusers' serialisation
        options) do not apply: the checkpoint is always one safetensors file."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        component_file = out / "model" / "idruid.py"
        if component_file.exists():  # save_checkpoint replaces only a folder of its own two files
            component_file.unlink()
        save_checkpoint(self.model, out / "model", {"sampling": self.sampling.to_dict()})
        component_file.write_text(COMPONENT_FILE.format(name=type(self.model).__name__))
        self.scheduler.save_pretrained(out / "scheduler")
        (out / "pipeline.py").write_text(PIPELINE_FILE)
        import diffusers

        index = {
            "_class_name": ["pipeline", type(self).__name__],
            "_diffusers_version": diffusers.__version__,
            "model": ["idruid", type(self.model).__name__],
            "scheduler": ["diffusers", type(self.scheduler).__name__],
            "sampling": self.sampling.to_dict(),
        }
        (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    # ------------------------------------------------------------------ LoRA
    def load_lora_weights(
        self, pretrained_model_name_or_path_or_dict, adapter_name: str | None = None, **kwargs
    ):
        """Load a LoRA of the backbone through peft (diffusers' ``load_lora_adapter``): a file,
        folder or state dict in diffusers' peft format, keys ``transformer.<module>.lora_A.weight``
        (SD3) or ``unet.<module>...`` (SD1.5). The IDM processors keep their own projections."""
        backbone = self.model.backbone
        if not hasattr(backbone, "load_lora_adapter"):
            raise NotImplementedError(
                "this diffusers has no ModelMixin.load_lora_adapter (diffusers >= 0.31)"
            )
        backbone.load_lora_adapter(
            pretrained_model_name_or_path_or_dict,
            prefix=self.model.backbone_attr,
            adapter_name=adapter_name,
            **kwargs,
        )

    # ------------------------------------------------------------------ inputs
    def _layouts(self, prompt, phrases, boxes, layouts) -> list[Layout]:
        """The batch as validated idruid layouts (idruid.layout's checks and messages)."""
        if layouts is not None:
            if prompt is not None or phrases is not None or boxes is not None:
                raise LayoutError("give either layouts= or prompt, phrases and boxes, not both")
            items = [layouts] if isinstance(layouts, Layout | dict) else list(layouts)
            return [
                item
                if isinstance(item, Layout)
                else layout_from_dict(item, f"layouts[{k}]" if len(items) > 1 else "")
                for k, item in enumerate(items)
            ]
        if prompt is None or phrases is None or boxes is None:
            raise LayoutError("prompt, phrases and boxes are all needed (or layouts=)")
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        phrase_lists = [phrases] if single else list(phrases)
        box_lists = [boxes] if single else list(boxes)
        if not (len(prompts) == len(phrase_lists) == len(box_lists)):
            raise LayoutError(
                f"{len(prompts)} prompts, {len(phrase_lists)} phrase lists and {len(box_lists)} box lists: "
                "give one of each per image"
            )
        out = []
        for k, (text, captions, rects) in enumerate(zip(prompts, phrase_lists, box_lists, strict=True)):
            where = "" if single else f"layouts[{k}]"
            prefix = f"{where}." if where else ""
            rects = rects.tolist() if hasattr(rects, "tolist") else rects
            if isinstance(captions, str) or not isinstance(captions, Sequence):
                raise LayoutError(
                    f"{prefix}phrases: must be a list of captions, got {type(captions).__name__}"
                )
            if not isinstance(rects, Sequence) or len(captions) != len(rects):
                count = len(rects) if isinstance(rects, Sequence) else type(rects).__name__
                raise LayoutError(
                    f"{prefix}boxes: {len(captions)} phrases need {len(captions)} boxes, got {count}"
                )
            obj = {
                "prompt": text,
                "instances": [{"caption": c, "box": b} for c, b in zip(captions, rects, strict=True)],
            }
            out.append(layout_from_dict(obj, where))
        return out

    def _noise(self, rows: Sequence[Layout], copy_index: Sequence[int], generator) -> torch.Tensor:
        """x_T of each output image (see the module docstring), (N, C, h, w) on the CPU."""
        shape = self.model.latent_shape
        if isinstance(generator, list):
            if len(generator) != len(rows):
                raise ValueError(f"{len(generator)} generators for {len(rows)} images: give one per image")
            draws = [torch.randn(shape, generator=g, device=g.device).cpu() for g in generator]
        elif generator is not None:
            draws = [torch.randn(shape, generator=generator, device=generator.device).cpu() for _ in rows]
        else:
            draws = [
                seeded_noise(shape, layout.seed + j) if layout.seed is not None else torch.randn(shape)
                for layout, j in zip(rows, copy_index, strict=True)
            ]
        return torch.stack(draws)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        phrases: list[str] | list[list[str]] | None = None,
        boxes: list | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        layout_fraction: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        return_dict: bool = True,
        layouts: Layout | dict | Sequence[Layout | dict] | None = None,
        distilled_guidance_scale: float | None = None,
        skip_guidance_layers: list[int] | None = None,
        skip_layer_guidance_scale: float | None = None,
        skip_layer_guidance_start: float | None = None,
        skip_layer_guidance_stop: float | None = None,
    ):
        """Generate one image per layout and ``num_images_per_prompt``.

        ``prompt`` (str or list), ``phrases`` (the instance captions: a list, or a list of lists
        in a batch) and ``boxes`` (``[x0, y0, x1, y1]`` normalised to [0, 1], one per phrase), or
        ``layouts``: idruid Layouts or layout dicts. Layouts of a batch may hold different numbers
        of instances. ``num_inference_steps``, ``guidance_scale`` (two-row classifier-free
        guidance, 1 = off), ``layout_fraction`` and ``distilled_guidance_scale`` (the scale a
        guidance-distilled backbone such as FLUX.1-dev takes as an input, FluxPipeline's
        ``guidance_scale``; refused by other backbones) and ``skip_guidance_layers`` with
        ``skip_layer_guidance_scale`` / ``_start`` / ``_stop`` (StableDiffusion3Pipeline's
        skip-layer guidance, SD3 and SD3.5 backbones) None take the checkpoint's settings
        (``self.sampling``). ``negative_prompt`` replaces the empty
        prompt of the guidance's unconditional branch (which never sees the layout).
        ``callback_on_step_end(pipe, i, t, {"latents": x})`` runs after every step, t being the
        scheduler's timestep; a returned ``"latents"`` replaces x. ``output_type``: "pil", "np"
        ((N, H, W, 3) float in [0, 1]), "pt" ((N, 3, H, W) float in [0, 1]) or "latent".
        Returns ``ImagePipelineOutput`` (or a 1-tuple with ``return_dict=False``).
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type '{output_type}': expected one of {', '.join(OUTPUT_TYPES)}")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}")
        unknown = sorted(set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs))
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {unknown}: only {self._callback_tensor_inputs}"
            )
        batch = self._layouts(prompt, phrases, boxes, layouts)
        settings = self.sampling.override(
            steps=num_inference_steps,
            cfg=guidance_scale,
            layout_fraction=layout_fraction,
            guidance=distilled_guidance_scale,
            skip_layers=skip_guidance_layers,
            skip_layer_scale=skip_layer_guidance_scale,
            skip_layer_start=skip_layer_guidance_start,
            skip_layer_stop=skip_layer_guidance_stop,
        )
        rows = [layout for layout in batch for _ in range(num_images_per_prompt)]
        copy_index = [j for _ in batch for j in range(num_images_per_prompt)]
        negatives = None
        if negative_prompt is not None:
            given = (
                [negative_prompt] * len(batch) if isinstance(negative_prompt, str) else list(negative_prompt)
            )
            if len(given) != len(batch):
                raise ValueError(f"{len(given)} negative prompts for {len(batch)} prompts")
            negatives = [text for text in given for _ in range(num_images_per_prompt)]

        times = self.model.process.scheduler_times(self.scheduler, settings.steps)
        timesteps = self.scheduler.timesteps
        progress = self.progress_bar(total=settings.steps)

        def on_step(i: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
            progress.update()
            if callback_on_step_end is None:
                return None
            tensors = {name: x for name in callback_on_step_end_tensor_inputs}
            returned = callback_on_step_end(self, i, timesteps[i], tensors) or {}
            return returned.get("latents")

        with progress:
            result = sample(
                self.model,
                rows,
                settings,
                x_init=self._noise(rows, copy_index, generator),
                device=self._execution_device,
                times=times,
                on_step=on_step,
                decode=output_type != "latent",
                negative_prompts=negatives,
            )
        self.maybe_free_model_hooks()
        images = result if output_type == "latent" else self._convert(result, output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    @staticmethod
    def _convert(images: torch.Tensor, output_type: str):
        """(N, 3, H, W) in [-1, 1] -> the output type; ``(np * 255).round()`` is idruid's uint8."""
        if output_type == "pil":
            return [Image.fromarray(image) for image in to_uint8(images)]
        unit = (images.float().clamp(-1.0, 1.0) + 1.0) / 2.0
        return (
            unit.cpu() if output_type == "pt" else unit.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
        )
