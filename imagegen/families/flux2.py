"""FLUX.2 [dev]: a guidance-distilled MMDiT reading Mistral-Small-3.1 hidden states, which generates from text and
edits from reference images in the same pipeline (Flux2Pipeline); flow matching with an empirical resolution shift."""

from __future__ import annotations

from . import _flux2
from .base import Family

MAX_SEQUENCE_LENGTH = 512  # Flux2Pipeline's default: the chat template, system message included, is cut there
DEFAULT_GUIDANCE = 4.0  # Flux2Pipeline's default and the model card's


class Flux2(Family):
    name = "flux2"
    label = "FLUX.2"
    released = "2025-11"
    # The same class edits: the reference images go in its `image` argument (tokens beside the latents, no noise
    # added to them), so imagegen's edit mode is Flux2Pipeline with images; diffusers has no img2img or inpaint for
    # it (Flux2KleinInpaintPipeline is klein's).
    pipelines = {
        ("text2image", None): "Flux2Pipeline",
        ("edit", None): "Flux2Pipeline",
    }
    flow = True
    default_multiple = 16
    denoiser = "transformer"
    cache_hooks = False  # Flux2Pipeline enters no cache_context, which the FBCache and TaylorSeer hooks read
    default_preset = "flux2-dev"
    edit_images = 6  # Black Forest Labs' editing guide: "recommended max 6" reference images for FLUX.2 [dev]
    cfg_help = ("FLUX.2 [dev] is guidance-distilled and has no classifier-free guidance: keep 1 (the default); how "
                f"strongly it follows the prompt is --guidance (default {DEFAULT_GUIDANCE:g})")
    distilled_guidance = True
    unsupported_samplers = {"heun": "Flux2Pipeline passes custom sigmas, which FlowMatchHeun does not accept"}
    flow_note = ", dynamic shifting"
    # diffusers' own layout, peft's, ai-toolkit's and BFL's (diffusion_model.), kohya's: Flux2LoraLoaderMixin converts
    # them all; it loads into the transformer only (no text-encoder LoRAs).
    lora_keys = r"(transformer|diffusion_model|base_model\.model)\.|lora_unet_(double|single)_blocks|lora_transformer_"
    lora_not = r"unet\.|text_encoder|lora_te\d?_|lora_unet_(down|up|mid|input|output|middle)_block|.*joint_blocks"
    weighted_encoders = ()  # A1111 weights act on CLIP only; the LLM reads the text with the weights removed

    def latent_patch(self, read, scale: int) -> tuple[int, int | None]:
        return 2, None  # the pipeline packs latents in 2x2 patches (its sizes are multiples of vae scale * 2)

    def lora_widths(self, read) -> tuple[tuple[str, int], ...]:
        return self.transformer_lora_widths(read)  # FLUX.1's LoRAs share its names, at half FLUX.2's width

    def guidance_embedded(self, read) -> bool | None:
        config = read("transformer/config.json")
        return bool(config.get("guidance_embeds", True)) if config else None  # the class's default: embedded

    # ---- guidance

    def guidance_arguments(self, cfg: float, guidance: float | None, negatives: list[str]) -> dict:
        # guidance_scale is the distilled guidance embedding; Flux2Pipeline takes no negative prompt at all.
        return {"guidance_scale": guidance if guidance is not None else DEFAULT_GUIDANCE}

    def cfg_problem(self, pipeline_class: str | None, cfg: float) -> str | None:
        if cfg <= 1:
            return None
        return (f"--cfg {cfg:g}: FLUX.2 [dev] has no classifier-free guidance (Flux2Pipeline takes no negative "
                f"prompt); use --cfg 1, and --guidance for how strongly it follows the prompt")

    def cfg_notes(self, cfg: float, negative: str) -> list[str]:
        if not negative:
            return []
        return ["flux2: the negative prompt is not used (FLUX.2 [dev] has no classifier-free guidance)"]

    # ---- prompts

    def prompt_limits(self, pipe) -> tuple[tuple[str, str, int | None, bool], ...]:
        """The prompt's share of the 512 tokens the pipeline reads: what the chat template and the system message
        leave (where the pipeline's tokenizer is a tokenizer; a PixtralProcessor wraps one and is not counted)."""
        tokenizer = getattr(pipe, "tokenizer", None)
        if tokenizer is None or not hasattr(tokenizer, "convert_tokens_to_ids"):
            return ()
        from diffusers.pipelines.flux2.pipeline_flux2 import format_input

        frame = tokenizer.apply_chat_template(format_input([""], system_message=pipe.system_message)[0],
                                              tokenize=True, return_dict=True, add_generation_prompt=False)
        return (("Mistral-Small-3.1", "tokenizer", MAX_SEQUENCE_LENGTH - len(frame["input_ids"]), False),)

    encode_each_prompt = True  # an LLM: each prompt alone, once per distinct prompt

    def encode_prompt(self, pipe, prompt: str, negative: str, device: str) -> dict:
        import torch

        with torch.no_grad():  # the text ids are the pipeline's own function of the embeddings: not passed
            embeds, _ = pipe.encode_prompt(prompt=prompt, device=device, max_sequence_length=MAX_SEQUENCE_LENGTH)
        return {"prompt_embeds": embeds}

    # ---- edit

    def edit_size(self, sizes: list[tuple[int, int]], multiple: int) -> tuple[int, int, str]:
        return _flux2.edit_size(sizes, multiple, "FLUX.2 [dev]")

    def edit_arguments(self, images: list, width: int, height: int, count: int) -> dict:
        return _flux2.edit_arguments(images, "FLUX.2 [dev]")

    # ---- latents

    def unpacked_latents(self, pipe, latents, width: int, height: int):
        """The packed tokens as the VAE's own latents, (batch, channels, height / 8, width / 8): the pipeline's
        unpacking, batch-norm denormalisation and 2x2 unpatchifying before its decode."""
        import torch

        side = pipe.vae_scale_factor * 2
        ids = pipe._prepare_latent_ids(torch.zeros(latents.shape[0], 1, height // side, width // side))
        latents = pipe._unpack_latents_with_ids(latents, ids.to(latents.device))
        bn = pipe.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).to(latents.device,
                                                                                                 latents.dtype)
        return pipe._unpatchify_latents(latents * std + mean)

    # ---- schedulers

    def flow_solver_kwargs(self, native: dict, shift: float) -> dict:
        # Flux2Pipeline always passes its empirical `mu` (and leaves its sigmas out for a solver with flow sigmas).
        return self.shifted_solver_kwargs(native, shift)



FAMILY = Flux2()
