"""Chroma: FLUX.1 [schnell] pruned (its modulation replaced by a small approximator) and de-distilled, with T5 as its
only text encoder; real classifier-free guidance with a negative prompt, flow matching with resolution shifting."""

from __future__ import annotations

from .base import Family

# T5 tokens ChromaPipeline and its img2img read; the inpaint pipeline's default is 256, and the length changes the
# image (diffusers passes the transformer a float padding mask, which SDPA adds rather than masks with): the encoded
# prompts (encode_prompt) are 512 long in every mode.
MAX_SEQUENCE_LENGTH = 512


class Chroma(Family):
    name = "chroma"
    label = "Chroma"
    released = "2025-08"
    pipelines = {
        ("text2image", None): "ChromaPipeline",
        ("image2image", None): "ChromaImg2ImgPipeline",
        ("inpaint", None): "ChromaInpaintPipeline",
    }
    cache_hooks = False  # ChromaPipeline enters no cache_context, and FBCache knows no ChromaTransformerBlock
    flow = True
    default_multiple = 16
    denoiser = "transformer"
    default_preset = "chroma"
    cfg_help = ("classifier-free guidance with the negative prompt (guidance_scale; on when > 1, a second transformer "
                "pass per step); Chroma1-HD's card uses 3")
    # Unlike FluxPipeline, Chroma's pipelines pass their sigmas even to a solver that makes its own flow sigmas.
    unsupported_samplers = {
        "heun": "Chroma's pipelines pass custom sigmas, which FlowMatchHeun does not accept",
        "dpmpp_2m": "Chroma's pipelines pass custom sigmas, which DPMSolverMultistep does not accept",
    }
    flow_note = ", dynamic shifting"
    # FluxLoraLoaderMixin: diffusers' layout and the FLUX.1 layouts it converts (kohya, ai-toolkit, BFL); its
    # text-encoder branch expects CLIP, and Chroma's text_encoder is T5, so no text-encoder LoRAs.
    lora_keys = (r"(transformer|diffusion_model|base_model\.model)\.|lora_unet_(double|single)_blocks|"
                 r"lora_transformer_|(double|single)_blocks\.")
    lora_not = r"unet\.|text_encoder|lora_te\d?_|lora_unet_(down|up|mid|input|output|middle)_block|.*joint_blocks"
    weighted_encoders = ()  # A1111 weights act on CLIP only; T5 reads the text with the weights removed
    token_limits = (("T5", "tokenizer", MAX_SEQUENCE_LENGTH - 1, False),)
    # T5 pads every prompt to the same 512 tokens and masks the padding, so a batch could share one call; encoding
    # each distinct prompt once still saves the 4.7 B encoder's pass for every repeat (batch, compare, -n).
    encode_each_prompt = True

    def prepare_pipeline(self, pipe) -> None:
        """A pipeline built from this family's model, fixed where diffusers' code trips on it (to be called on each
        pipeline loaded or built with from_pipe; the changes are to configs only, and change no image that runs)."""
        # ChromaInpaintPipeline (diffusers 0.42) reads transformer.config.guidance_embeds, a FLUX.1 key that
        # ChromaTransformer2DModel has not (its guidance is real CFG, not an embedding): the answer is no.
        if "guidance_embeds" not in pipe.transformer.config:
            pipe.transformer.register_to_config(guidance_embeds=False)
        # ChromaImg2ImgPipeline builds its image processor without the VAE's latent channels (FluxImg2ImgPipeline
        # passes them), so latents given as its image (the hires fix's) are taken for pixels and resized.
        processor, channels = getattr(pipe, "image_processor", None), pipe.vae.config.latent_channels
        if processor is not None and processor.config.vae_latent_channels != channels:
            processor.register_to_config(vae_latent_channels=channels)

    def latent_patch(self, read, scale: int) -> tuple[int, int | None]:
        return 2, None  # latents packed in 2x2 patches, as FLUX.1

    def lora_widths(self, read) -> tuple[tuple[str, int], ...]:
        return self.transformer_lora_widths(read)

    def encode_prompt(self, pipe, prompt: str, negative: str, device: str) -> dict:
        import torch

        with torch.no_grad():
            embeds, _, mask, neg, _, neg_mask = pipe.encode_prompt(
                prompt=prompt, negative_prompt=negative or "", device=device, do_classifier_free_guidance=True,
                max_sequence_length=MAX_SEQUENCE_LENGTH)
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask,
                "negative_prompt_embeds": neg, "negative_prompt_attention_mask": neg_mask}

    def embeddings_for(self, embeddings: dict, cfg: float) -> dict:
        # Without CFG (cfg <= 1) the pipeline reads no negative, as its text path encodes none.
        if cfg <= 1:
            return {k: v for k, v in embeddings.items() if not k.startswith("negative")}
        return embeddings

    def unpacked_latents(self, pipe, latents, width: int, height: int):
        return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)  # 2x2 patches, as FLUX.1

    def flow_solver_kwargs(self, native: dict, shift: float) -> dict:
        return self.shifted_solver_kwargs(native, shift)  # its pipelines always pass `mu` to set_timesteps


FAMILY = Chroma()
