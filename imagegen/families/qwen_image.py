"""Qwen-Image (Alibaba Qwen): a 20B MMDiT with a Qwen2.5-VL text encoder, a Wan-style VAE and latents packed 2x2,
flow matching with resolution shifting and true CFG; Qwen-Image-Edit-2509 edits by instruction from 1-3 images."""

from __future__ import annotations

import inspect
import math

from .base import Family

MAX_SEQUENCE_LENGTH = 512  # text-encoder tokens a call keeps (the pipelines' max_sequence_length default)
EMPTY_NEGATIVE = " "  # the model card's negative prompt "if you do not have specific concept to remove"
GUIDANCE = 1.0  # guidance_scale without --guidance: the Edit-2509 card's; only a guidance-distilled model reads it
EDIT_AREA = 1024 * 1024  # QwenImageEditPlusPipeline's output area without a size
_VAE_DOWNSAMPLES = 3  # AutoencoderKLQwenImage's default temperal_downsample has 3 entries


class QwenImage(Family):
    name = "qwen-image"
    label = "Qwen-Image"
    released = "2025-08"
    pipelines = {
        ("text2image", None): "QwenImagePipeline",
        ("image2image", None): "QwenImageImg2ImgPipeline",
        ("inpaint", None): "QwenImageInpaintPipeline",
        ("text2image", "controlnet"): "QwenImageControlNetPipeline",
        # Qwen-Image-Edit-2509's (multi-reference); its prompt encoder reads the references too.
        ("edit", None): "QwenImageEditPlusPipeline",
        # QwenImageControlNetInpaintPipeline is not a ControlNet for inpaint: its net (InstantX's inpainting one)
        # takes the image and mask as its condition (control_image, control_mask) and there is no strength, so
        # --control has no Qwen-Image pipeline in img2img or inpaint.
    }
    flow = True
    default_multiple = 16  # 8 pixels a latent x the 2x2 packing
    denoiser = "transformer"  # QwenImageTransformer2DModel declares its repeated blocks itself
    gguf_architecture = "qwen_image"  # city96's GGUF files (ComfyUI-GGUF's architecture name)
    # No attention_blocks: FasterCache mixes the attention of true CFG's two passes, whose text lengths differ (on
    # the tiny model it fails adding a 9-token output to a 6-token one); diffusers has no MagCache ratios for it.
    default_preset = "qwen-image"
    class_presets = {"QwenImageEditPlusPipeline": "qwen-image-edit"}
    cfg_help = ("true classifier-free guidance (true_cfg_scale): > 1 is on with the negative prompt (a space when "
                "none is given, as the model card), a second transformer pass per step; 1 is off")
    # Qwen-Image's transformers have no guidance embedding, but the pipelines take one for guidance-distilled
    # transformers (guidance_embeds in their config): --guidance where a model has it (guidance_embedded).
    distilled_guidance = True
    # Every pipeline passes custom sigmas (and mu) to set_timesteps: schedulers whose set_timesteps takes no sigmas
    # fail in retrieve_timesteps (Flux drops its sigmas for flow-sigma solvers; these pipelines do not).
    unsupported_samplers = {
        "heun": "Qwen-Image's pipelines pass custom sigmas, which FlowMatchHeun does not accept",
        "dpmpp_2m": "Qwen-Image's pipelines pass custom sigmas, which DPMSolverMultistep does not accept",
    }
    flow_note = ", dynamic shifting, shift_terminal"
    controlnet_class = "QwenImageControlNetModel"
    # QwenImageLoraLoaderMixin reads transformer LoRAs in diffusers' layout and converts ComfyUI's, kohya's and
    # alpha-scaled ones. The blocks share SD3's and Flux's attention names: told apart by what those have and Qwen's
    # blocks lack (single blocks, ff/ff_context, norm1), and by the query width (lora_widths).
    lora_keys = r"(transformer\.|diffusion_model\.|lora_unet_)?transformer_blocks[._]\d+[._](attn|img_|txt_)"
    lora_not = (r"unet\.|text_encoder|lora_te|lora_unet_(down|up|mid|input|output|middle|single|double)_|"
                r".*(single_transformer_blocks|joint_blocks|double_blocks|single_blocks|ff_context|\.ff\.|norm1)")
    weighted_encoders = ()  # no CLIP: A1111 weights cannot act; Qwen2.5-VL reads the text with them removed
    token_limits = (("Qwen2.5-VL", "tokenizer", MAX_SEQUENCE_LENGTH, False),)
    encode_each_prompt = True
    edit_images = 3  # the Edit-2509 card: best with 1 to 3 input images
    controlnets = 1  # QwenImageControlNetPipeline takes no list of nets (it does not wrap one, as Flux's does)
    prompts_per_call = {"QwenImageEditPlusPipeline": 1}  # diffusers 0.42 raises on a batch of prompts there

    # ---- sizes

    def vae_scale(self, read) -> int | None:
        # The Wan-style VAE has no block_out_channels; the pipelines take 2 ** len(temperal_downsample).
        vae = read("vae/config.json")
        if not vae:
            return None
        return 2 ** len(vae.get("temperal_downsample") or [None] * _VAE_DOWNSAMPLES)

    def latent_patch(self, read, scale: int) -> tuple[int, int | None]:
        return 2, None  # latents packed in 2x2 patches; the RoPE tables reach far past any practical size

    def unpacked_latents(self, pipe, latents, width: int, height: int):
        # (batch, channels, 1 frame, h, w) from the pipeline: the frame axis goes; img2img takes 4-D latents back
        return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)[:, :, 0]

    # ---- guidance

    def guidance_embedded(self, read) -> bool | None:
        config = read("transformer/config.json")
        return bool(config.get("guidance_embeds")) if config else None

    def guidance_arguments(self, cfg: float, guidance: float | None, negatives: list[str]) -> dict:
        # True CFG runs only with a negative prompt: without one, --cfg > 1 takes the model card's " ", so the flag
        # does what it says. At 1 no negative goes in (true_cfg_scale 1 is off; its default, 4, would be on).
        kwargs = {"true_cfg_scale": cfg, "guidance_scale": GUIDANCE if guidance is None else guidance}
        kwargs["negative_prompt"] = [n or EMPTY_NEGATIVE for n in negatives] if cfg > 1 else None
        return kwargs

    def cfg_notes(self, cfg: float, negative: str) -> list[str]:
        if cfg <= 1:
            return []
        given = "" if negative else " (none given: a space, as the model card)"
        return [f"qwen-image: --cfg {cfg:g} > 1 turns on true classifier-free guidance (true_cfg_scale) with the "
                f"negative prompt{given}; each step runs the transformer twice"]

    # ---- prompts

    def encode_prompt(self, pipe, prompt: str, negative: str, device: str) -> dict | None:
        import torch

        if "image" in inspect.signature(pipe.encode_prompt).parameters:
            return None  # the edit pipelines' Qwen2.5-VL reads the reference images with the prompt
        with torch.no_grad():
            embeds, mask = pipe.encode_prompt(prompt=prompt, device=device, max_sequence_length=MAX_SEQUENCE_LENGTH)
            neg, neg_mask = pipe.encode_prompt(prompt=negative or EMPTY_NEGATIVE, device=device,
                                               max_sequence_length=MAX_SEQUENCE_LENGTH)
        # One prompt's mask is all ones, which encode_prompt returns as None; a tensor keeps the call's inputs whole
        # (the pipeline warns about embeddings without one) and every row the same shape.
        return {"prompt_embeds": embeds, "prompt_embeds_mask": _ones(embeds, mask),
                "negative_prompt_embeds": neg, "negative_prompt_embeds_mask": _ones(neg, neg_mask)}

    def embeddings_for(self, embeddings: dict, cfg: float) -> dict:
        if cfg <= 1:  # no true CFG: the negative stays out, as guidance_arguments leaves out the negative prompt
            return {k: v for k, v in embeddings.items() if not k.startswith("negative")}
        return embeddings

    def prompt_limits(self, pipe) -> tuple[tuple[str, str, int | None, bool], ...]:
        if "image" in inspect.signature(pipe.encode_prompt).parameters:
            return ()  # the edit pipelines keep the whole prompt
        template = getattr(pipe, "prompt_template_encode", None)
        if template is None:
            return self.token_limits
        # The pipeline drops the template's first tokens (34: its system prompt in Qwen's tokenizer) and keeps
        # MAX_SEQUENCE_LENGTH after them: what of the template stays before the prompt takes from the prompt's share.
        prefix = len(pipe.tokenizer(template.split("{}")[0])["input_ids"])
        drop = getattr(pipe, "prompt_template_encode_start_idx", 0)
        return (("Qwen2.5-VL", "tokenizer", MAX_SEQUENCE_LENGTH - max(0, prefix - drop), False),)

    # ---- edit

    def edit_size(self, sizes: list[tuple[int, int]], multiple: int) -> tuple[int, int, str]:
        # QwenImageEditPlusPipeline's calculate_dimensions, written out: the pipeline module imports torch and
        # transformers, and this runs before any weights load. Python's round, as there.
        width, height = sizes[-1]
        ratio = width / height
        side = math.sqrt(EDIT_AREA * ratio)
        width, height = round(side / 32) * 32, round(side / ratio / 32) * 32
        return (max(multiple, width // multiple * multiple), max(multiple, height // multiple * multiple),
                f"the last image's aspect ratio at about 1024x1024 (sides rounded to 32, then down to a multiple "
                f"of {multiple})")

    def edit_arguments(self, images: list, width: int, height: int, count: int) -> dict:
        # One list of references for the call: the pipeline reads every entry as a reference of the same edit (its
        # prompt says "Picture 1: ... Picture 2: ..."), and takes one prompt a call.
        return {"image": list(images)}

    # ---- schedulers

    def flow_solver_kwargs(self, native: dict, shift: float) -> dict:
        # The pipelines always pass mu; shift_terminal reaches UniPC from the native config (build_scheduler).
        return self.shifted_solver_kwargs(native, shift)

    # ---- LoRA and ControlNet

    def lora_widths(self, read) -> tuple[tuple[str, int], ...]:
        return self.transformer_lora_widths(read)

    def owns_controlnet(self, config: dict) -> bool:
        # InstantX's inpainting net shares the class; it reads the image and mask (extra_condition_channels), not
        # a map, and runs only in QwenImageControlNetInpaintPipeline.
        return super().owns_controlnet(config) and not config.get("extra_condition_channels")


def _ones(embeds, mask):
    """The attention mask of one prompt's embeddings (all ones where the pipeline gave None)."""
    import torch

    return mask if mask is not None else torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)


FAMILY = QwenImage()
