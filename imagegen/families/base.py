"""The Family protocol: everything one model family means, in one object. Each module of this package subclasses
`Family` and exports one instance as FAMILY; nothing outside the package asks which family it is looking at."""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

CLASSIC_CFG = "classifier-free guidance; on when > 1, and the negative prompt acts through it"
TEXT2IMAGE = "text2image"  # diffusers' task names (AUTO_TEXT2IMAGE_PIPELINES_MAPPING, ...)


@dataclass(frozen=True)
class Checkpoint:
    """One kind of single-file checkpoint of a family (its original layout, as civitai, A1111 and ComfyUI keep it),
    told by the tensor names in its header."""

    name: str  # how people call it: "SDXL base"
    repo: str  # the diffusers repo whose configs describe its architecture
    preset: str  # the preset it runs with when none is named
    keys: tuple[str, ...]  # regexes: each matches some tensor name
    absent: tuple[str, ...] = ()  # regexes no tensor name matches
    # (regex, dimension, size): a tensor named so has that size there (checked where the file has such a tensor;
    # only real-size files are told apart this way, a tiny fine-tune falls through to the family's last kind)
    shapes: tuple[tuple[str, int, int], ...] = ()
    unsupported: str = ""  # why imagegen cannot run this kind yet (told apart, then refused in one line)


class Family:
    """One model family (architecture), independent of any checkpoint. Subclasses set the attributes and override
    the methods where the family differs from this default (a UNet family with classic CFG)."""

    name: str = ""
    label: str = ""  # how people write it: "SDXL", "Flux"
    released: str = ""  # YYYY-MM: orders every listing, oldest first
    # The diffusers class per (task, variant): ("text2image", None) loads the model; a variant is what an adapter
    # needs on top ("controlnet"). Keyed like diffusers' AUTO_*_PIPELINES_MAPPING, so a new mode is an entry here.
    pipelines: dict[tuple[str, str | None], str] = {}
    flow: bool = False  # flow-matching (rectified flow) models need flow-aware schedulers
    # The scheduler registry's kind of sampler implementation it takes, where neither "flow" nor "eps" (imagegen.
    # schedulers: SANA-Sprint's "trigflow"), and why another kind's scheduler class cannot drive it.
    schedule_kind: str = ""
    foreign_scheduler: str = ""
    default_multiple: int = 8  # used only when the model's configs cannot be read
    pipeline_multiple: int = 1  # what the diffusers pipeline itself insists on, whatever the configs say
    denoiser: str = "unet"  # the pipeline component that runs every step (what --compile compiles)
    # The denoiser's repeating block classes, for --compile regional where its diffusers class declares none
    # (diffusers' `_repeated_blocks`, which compile_repeated_blocks reads).
    repeated_blocks: tuple[str, ...] = ()
    # --cache magcache: the name of diffusers' calibrated magnitude ratios for it (diffusers.hooks.mag_cache);
    # --cache fastercache: regexes of its attention blocks' module names.
    mag_ratios: str | None = None
    attention_blocks: tuple[str, ...] = ()
    gguf_architecture: str | None = None  # general.architecture of its GGUF transformer files (--quantize gguf:FILE)
    default_preset: str = ""  # the preset whose defaults a bare --model of this family takes
    class_presets: dict[str, str] = {}  # model_index.json class -> the preset for it, where not default_preset
    cfg_help: str = CLASSIC_CFG
    load_kwargs: dict[str, Any] = {}  # extra from_pretrained arguments (components to leave out)
    distilled_guidance: bool = False  # takes --guidance (a distilled guidance embedding)
    unsupported_samplers: dict[str, str] = {}  # sampler slug -> why it cannot drive this family
    flow_note: str = ""  # what the flow solvers get beyond the common flow flags (shown by `imagegen schedulers`)
    # ControlNet: the net class (None: no ControlNet support) and config values that tell its nets from others'.
    controlnet_class: str | None = None
    controlnet_signature: dict[str, Any] = {}
    controlnets: int = 8  # nets one call takes (several where its pipelines wrap a list in a multi-net)
    control_map_arguments: dict[str, str] = {}  # task -> the call argument its map goes in, where not control_image
    # IP-Adapter: the image encoder class its adapters were trained with (None: no support), reference images one
    # adapter takes, and the CFG scale set when the adapter acts only through CFG (None: it does not).
    ip_adapter_encoder: str | None = None
    ip_adapter_images: int = 4
    ip_adapter_cfg: float | None = None
    # LoRA file tensor names: a regex some key must match (None: no LoRA support), and one no key may match.
    lora_keys: str | None = None
    lora_not: str | None = None
    lora_unread: tuple[str, str] | None = None  # (regex, why): a layout of its LoRAs diffusers does not convert
    # Textual-inversion files: their tensor key -> the (tokenizer, text encoder) attributes it loads into; "" is the
    # whole file (one encoder); {} where diffusers' pipelines of the family load none.
    embedding_keys: dict[str, tuple[str, str]] = {}
    # Prompts (imagegen.prompting): the CLIP encoders whose per-token hidden states condition the denoiser, as
    # (tokenizer, encoder) attributes of the pipeline: A1111's weights and chunks act there (none where CLIP gives only
    # a pooled vector), and the hidden states the pipeline reads from them.
    weighted_encoders: tuple[tuple[str, str], ...] = (("tokenizer", "text_encoder"),)
    clip_layer: str = "last"  # "last" (SD 1.x, normalised) or "penultimate" (SDXL, SD3)
    # Encoders that read a fixed number of tokens: (label, tokenizer attribute, tokens read (None: a CLIP chunk, from
    # its tokenizer), chunked under a1111).
    token_limits: tuple[tuple[str, str, int | None, bool], ...] = (("CLIP", "tokenizer", None, True),)
    # Large (LLM) text encoders: each prompt is encoded alone, once per distinct prompt in a run, and passed as
    # embeddings (their text path pads a batch to its longest prompt, so an image would depend on its batch).
    encode_each_prompt: bool = False
    # Edit (instruction editing from reference images; an ("edit", variant) pipeline entry turns it on): how many
    # reference images one edit takes at most.
    edit_images: int = 1
    latent_hires: bool = True  # its img2img pipeline takes latents (--hires-upscaler latent)
    prompts_per_call: dict[str, int] = {}  # pipeline class -> the most prompts one call of it takes
    cache_hooks: bool = True  # its pipelines set diffusers' cache context, which --cache's hooks read
    # Single-file checkpoints (imagegen.checkpoints): the kinds, most specific first (the last one names only what
    # every file of the family has), and the pipeline component -> a regex of the tensor names it holds there.
    checkpoints: tuple[Checkpoint, ...] = ()
    checkpoint_parts: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<family {self.name}>"

    # ---- pipelines

    def pipeline_class(self, task: str = TEXT2IMAGE, variant: str | None = None) -> str | None:
        """The diffusers class for this task and variant, or None where diffusers has none."""
        return self.pipelines.get((task, variant))

    def declared_by(self) -> set[str]:
        """The model_index.json `_class_name`s that mark a model folder as this family's (a folder saved from any of
        its pipelines: FLUX.1-Fill-dev declares FluxFillPipeline)."""
        return set(self.pipelines.values())

    # ---- sizes

    def size_rule(self, read: Callable[[str], dict | None]) -> tuple[int | None, int | None]:
        """(multiple, max side) from the model's configs, read without weights; (None, None) if unreadable."""
        scale = self.vae_scale(read)
        if scale is None:
            return None, None
        patch, max_side = self.latent_patch(read, scale)
        return math.lcm(scale * patch, self.pipeline_multiple), max_side

    def denoiser_width(self, config: dict) -> int | None:
        """The width of the denoiser's hidden states, from its config (memory plans), or None if unknown."""
        heads, head_dim = config.get("num_attention_heads"), config.get("attention_head_dim")
        if isinstance(heads, int) and isinstance(head_dim, int):
            return heads * head_dim
        channels = config.get("block_out_channels")
        return channels[0] if channels else None

    def vae_scale(self, read: Callable[[str], dict | None]) -> int | None:
        """Pixels per latent side (the VAE's downsampling), from its config; None if unreadable."""
        vae = read("vae/config.json")
        if not vae or not vae.get("block_out_channels"):
            return None
        return 2 ** (len(vae["block_out_channels"]) - 1)

    def guidance_embedded(self, read: Callable[[str], dict | None]) -> bool | None:
        """Whether the model's denoiser takes --guidance (a distilled guidance embedding); None if unknown."""
        return True if self.distilled_guidance else False

    def transformer_lora_widths(self, read: Callable[[str], dict | None]) -> tuple[tuple[str, int], ...]:
        """lora_widths for an MMDiT: its attention's query projection takes the transformer's inner width."""
        config = read("transformer/config.json") or {}
        heads, dim = config.get("num_attention_heads"), config.get("attention_head_dim")
        if not (isinstance(heads, int) and isinstance(dim, int)):
            return ()
        return ((r".*(attn[._]to_q|img_attn_qkv)[._](lora_A|lora_down)\.weight$", heads * dim),)

    def latent_patch(self, read: Callable[[str], dict | None], scale: int) -> tuple[int, int | None]:
        """(latent pixels per denoiser token side, the largest image side or None)."""
        return 1, None

    # ---- guidance

    def guidance_arguments(self, cfg: float, guidance: float | None, negatives: list[str]) -> dict:
        """The call arguments that --cfg (and --guidance) mean for this family."""
        # An empty negative prompt is left to the pipeline's own default (SDXL: zero embeddings); the group key keeps
        # empty and non-empty negatives apart so this holds for every image of a micro-batch.
        return {"guidance_scale": cfg, "negative_prompt": negatives if any(negatives) else None}

    def schedule_arguments(self, steps: int) -> dict:
        """Call arguments that depend on the number of steps a call runs (SANA-Sprint's trained timesteps)."""
        return {}

    def cfg_problem(self, pipeline_class: str | None, cfg: float) -> str | None:
        """Why this --cfg cannot run in that pipeline class (one line), or None."""
        return None

    def cfg_ignored(self, read: Callable[[str], dict | None]) -> str | None:
        """Why this model's pipeline ignores --cfg, from its configs (a step-distilled checkpoint), or None."""
        return None

    def cfg_notes(self, cfg: float, negative: str) -> list[str]:
        """What the user should be told about this --cfg on this family."""
        return []

    # ---- prompts

    def encode_prompt(self, pipe, prompt: str, negative: str, device: str) -> dict:
        """The prompt and negative prompt encoded once, as the embedding arguments of this family's pipeline call."""
        import torch

        with torch.no_grad():
            embeds, neg, pooled, neg_pooled = pipe.encode_prompt(
                prompt=prompt, device=device, do_classifier_free_guidance=True, negative_prompt=negative or None)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": neg, "pooled_prompt_embeds": pooled,
                "negative_pooled_prompt_embeds": neg_pooled}

    # ---- LoRA

    def lora_widths(self, read: Callable[[str], dict | None]) -> tuple[tuple[str, int], ...]:
        """(regex of LoRA tensor names, the input width this model gives those layers), from its configs: a LoRA
        trained on another base (SD 2.x for SD 1.5, or SD 1.5 for SDXL) shows it in its header."""
        unet = read("unet/config.json") or {}
        dim = unet.get("cross_attention_dim")  # the text encoders' width: 768 SD 1.x, 1024 SD 2.x, 2048 SDXL
        return ((r".*attn2[._]to_[kv][._](lora_A|lora_down)\.weight$", dim),) if isinstance(dim, int) else ()

    def lora_fits(self, keys) -> bool:
        """Whether a LoRA file's tensor names (its header) are this family's, in a layout diffusers' loader reads
        (its own and peft's, kohya/A1111, and the variants it converts)."""
        if not self.lora_keys:
            return False
        include, exclude = re.compile(self.lora_keys), re.compile(self.lora_not) if self.lora_not else None
        return any(include.match(k) for k in keys) and not (exclude and any(exclude.match(k) for k in keys))

    # ---- prompts

    def prompt_limits(self, pipe) -> tuple[tuple[str, str, int | None, bool], ...]:
        """(label, tokenizer attribute, tokens it reads, whether the a1111 syntax chunks it) for the cut notes."""
        return self.token_limits

    @staticmethod
    def chat_template_share(pipe, cut: int, **template) -> int:
        """The tokens of a prompt an LLM encoder keeps when its pipeline cuts the chat-templated text at `cut`: what
        the template (rendered around an empty message, with `template`'s options) leaves."""
        frame = pipe.tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False,
                                                   add_generation_prompt=True, **template)
        return cut - len(pipe.tokenizer(frame, add_special_tokens=False)["input_ids"])

    def weighted_embeddings(self, pipe, encoded: list, plain: str, plain_negative: str, *,
                            negative_empty: bool) -> dict:
        """The embedding arguments from the weighted CLIP outputs (imagegen.weighting.Encoded, one per entry of
        weighted_encoders); `plain` is the text without weights, for encoders that read it as it is (T5)."""
        return {"prompt_embeds": encoded[0].prompt, "negative_prompt_embeds": encoded[0].negative}

    def embeddings_for(self, embeddings: dict, cfg: float) -> dict:
        """The encoded prompt as one call at this --cfg takes it."""
        return embeddings

    # ---- pipelines, once built

    def prepare_pipeline(self, pipe) -> None:
        """Fix a pipeline loaded or built (from_pipe) from this family's model where diffusers' code trips on it."""

    # ---- edit

    def edit_size(self, sizes: list[tuple[int, int]], multiple: int) -> tuple[int, int, str]:
        """Without --size: the output (width, height) of an edit of reference images of these sizes, and the rule
        that gave it, in words for the record."""
        width, height = sizes[0]
        return (max(multiple, width // multiple * multiple), max(multiple, height // multiple * multiple),
                f"the first image's size, rounded down to a multiple of {multiple}")

    def edit_arguments(self, images: list, width: int, height: int, count: int) -> dict:
        """The call arguments that carry the reference images (PIL, as given) of one micro-batch of `count` images,
        all of which edit the same references."""
        return {"image": list(images) if len(images) > 1 else images[0]}

    # ---- latents

    def unpacked_latents(self, pipe, latents, width: int, height: int):
        """A pipeline's output_type='latent' result as (batch, channels, height, width) latents."""
        return latents

    # ---- schedulers

    def flow_solver_kwargs(self, native: dict, shift: float) -> dict:
        """What a multistep flow solver needs beyond the common flow flags to match the native scheduler."""
        return {}

    @staticmethod
    def shifted_solver_kwargs(native: dict, shift: float) -> dict:
        """flow_solver_kwargs for a pipeline that always passes `mu` to set_timesteps (Flux's resolution shifting),
        which the multistep solvers accept only with dynamic shifting. A model without dynamic shifting (FLUX.1
        schnell: a fixed shift) gets base_shift == max_shift == ln(shift), so mu = ln(shift) at every size and the
        solver's flow_shift = exp(mu) = shift, as its native scheduler."""
        import math

        kwargs = {"use_dynamic_shifting": True, "time_shift_type": native.get("time_shift_type", "exponential")}
        if not native.get("use_dynamic_shifting", False):
            kwargs["base_shift"] = kwargs["max_shift"] = math.log(shift)
        else:
            for key in ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len"):
                if key in native:
                    kwargs[key] = native[key]
        return kwargs

    # ---- single-file checkpoints

    def convert_checkpoint(self, load: Callable[[], dict], read: Callable[[str], dict | None]) -> dict | None:
        """The denoiser's tensors of a single-file checkpoint (`load()` reads them) in diffusers' layout, where
        diffusers' own converter cannot convert them (None: it can, and does)."""
        return None

    # ---- ControlNet

    def owns_controlnet(self, config: dict) -> bool:
        """Whether a ControlNet config.json is one of this family's nets."""
        if self.controlnet_class is None or config.get("_class_name") != self.controlnet_class:
            return False
        return all(config.get(key) == value for key, value in self.controlnet_signature.items())

    def control_argument(self, task: str) -> str:
        """The pipeline argument the control map goes in."""
        return self.control_map_arguments.get(task, "control_image")

    def controlnet_call(self, pipe, seeds: list[int]):
        """A context for one ControlNet call (a family's quirks go here)."""
        return contextlib.nullcontext()

    # ---- IP-Adapter

    def ip_adapter_load_kwargs(self) -> dict:
        """load_ip_adapter's arguments for an image encoder imagegen registered itself."""
        return {"image_encoder_folder": None}

    def ip_adapter_processor(self, encoder, source: str, kwargs: dict):
        """The image processor for the adapter's encoder (as diffusers' loader builds it: CLIP at its resolution)."""
        import transformers

        size = encoder.config.image_size
        return transformers.CLIPImageProcessor(size=size, crop_size=size)
