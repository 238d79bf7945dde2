"""FLUX.2 [klein] (4B, 9B and their Base models): a Flux2 transformer reading three hidden layers of a Qwen3 LLM,
latents packed 2x2, flow matching with resolution shifting; one pipeline generates and edits from up to four
reference images. The 4B and 9B are step-distilled (their pipeline ignores guidance); the Base models take real CFG."""

from __future__ import annotations

import math

from . import _flux2
from .base import Family

MAX_REFERENCES = 4  # Black Forest Labs' FLUX.2 docs: klein 4B and 9B edit with up to 4 reference images
CUT_LENGTH = 512  # tokens of the templated prompt the pipeline reads (its max_sequence_length)


class Flux2Klein(Family):
    name = "flux2-klein"
    label = "FLUX.2 klein"
    released = "2026-01"
    # Flux2KleinKVPipeline (FLUX.2-klein-9b-kv) is left out: the same edit with the references' attention keys and
    # values cached after the first step, a speed-up tied to its own checkpoint and with no guidance_scale argument.
    # diffusers has no klein img2img pipeline: its inpaint pipeline reads the init image as a reference too.
    pipelines = {
        ("text2image", None): "Flux2KleinPipeline",
        ("edit", None): "Flux2KleinPipeline",  # the `image` argument: reference images, read beside the prompt
        ("inpaint", None): "Flux2KleinInpaintPipeline",
    }
    flow = True
    default_multiple = 16
    denoiser = "transformer"
    default_preset = "flux2-klein"
    cfg_help = ("FLUX.2 klein Base: classifier-free guidance, on when > 1 (the negative prompt acts through it); the "
                "step-distilled klein 4B and 9B ignore it: keep 1")
    unsupported_samplers = {"heun": "the FLUX.2 klein pipelines pass custom sigmas, which FlowMatchHeun does not accept"}
    flow_note = ", dynamic shifting"
    edit_images = MAX_REFERENCES
    # LoRAs in diffusers' or peft's layout, or the BFL/ai-toolkit one diffusers converts; the names FLUX.1 alone has
    # (per-block adaLN, split single-block projections, its MLP's net.0) and other families' are refused.
    lora_keys = (r"(transformer\.|base_model\.model\.|diffusion_model\.)?(transformer_blocks|single_transformer_blocks"
                 r"|double_blocks|single_blocks)\.\d+\.")
    lora_not = (r"unet\.|text_encoder_2\.|.*(joint_blocks|\.norm1\.linear|\.norm1_context\.linear|\.norm\.linear"
                r"|ff\.net\.|ff_context\.net\.|proj_mlp|_mod\.lin|single_transformer_blocks\.\d+\.attn\.to_[qkv]\.)")
    weighted_encoders = ()  # A1111 weights act on CLIP only; the Qwen3 encoder reads the text as written
    token_limits = (("Qwen3", "tokenizer", CUT_LENGTH - 12, False),)  # 12: the chat template's own tokens
    encode_each_prompt = True

    # ---- sizes

    def latent_patch(self, read, scale: int) -> tuple[int, int | None]:
        # The pipeline packs 2x2 latent patches for the transformer (AutoencoderKLFlux2's patch_size, which its
        # batch norm statistics are kept for).
        vae = read("vae/config.json") or {}
        patch = vae.get("patch_size") or (2, 2)
        return math.lcm(2, *(int(p) for p in patch)), None

    # ---- guidance

    def guidance_arguments(self, cfg: float, guidance: float | None, negatives: list[str]) -> dict:
        # guidance_scale is real CFG (on above 1) unless the model_index says is_distilled, when the pipeline ignores
        # it. The pipelines take no negative_prompt: the negative comes in as negative_prompt_embeds (encode_prompt).
        return {"guidance_scale": cfg}

    def cfg_ignored(self, read) -> str | None:
        if (read("model_index.json") or {}).get("is_distilled"):
            return "this FLUX.2 klein model is step-distilled (is_distilled): its pipeline ignores CFG"
        return None

    def cfg_notes(self, cfg: float, negative: str) -> list[str]:
        if cfg <= 1:
            return []
        return [f"flux2-klein: --cfg {cfg:g} > 1 runs classifier-free guidance (a second transformer pass per step) "
                f"on this klein Base model"]

    # ---- prompts

    def prompt_limits(self, pipe) -> tuple[tuple[str, str, int | None, bool], ...]:
        # The pipelines cut the templated text (thinking off: an empty think block), so the prompt's share is what
        # the chat template leaves.
        return (("Qwen3", "tokenizer", self.chat_template_share(pipe, CUT_LENGTH, enable_thinking=False), False),)

    def encode_prompt(self, pipe, prompt: str, negative: str, device: str) -> dict:
        import torch

        with torch.no_grad():
            embeds, _ = pipe.encode_prompt(prompt=prompt, device=device)
            neg, _ = pipe.encode_prompt(prompt=negative or "", device=device)  # "" is the pipeline's own negative
        return {"prompt_embeds": embeds, "negative_prompt_embeds": neg}

    def embeddings_for(self, embeddings: dict, cfg: float) -> dict:
        if cfg <= 1:
            return {k: v for k, v in embeddings.items() if not k.startswith("negative")}
        return embeddings

    # ---- edit

    def edit_size(self, sizes: list[tuple[int, int]], multiple: int) -> tuple[int, int, str]:
        return _flux2.edit_size(sizes, multiple, "FLUX.2 klein")

    def edit_arguments(self, images: list, width: int, height: int, count: int) -> dict:
        return _flux2.edit_arguments(images, "FLUX.2 klein")

    # ---- LoRA and schedulers

    def lora_widths(self, read) -> tuple[tuple[str, int], ...]:
        return self.transformer_lora_widths(read)

    def flow_solver_kwargs(self, native: dict, shift: float) -> dict:
        # The klein pipelines always pass `mu` (their own empirical formula of image tokens and steps), which the
        # multistep solvers take only with dynamic shifting: flow_shift = exp(mu), as the native scheduler's shift.
        return self.shifted_solver_kwargs(native, shift)



FAMILY = Flux2Klein()
