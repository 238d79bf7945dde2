"""Z-Image (Tongyi-MAI): a single-stream DiT reading a Qwen3 LLM's second-to-last hidden states, 2x2 patches over a
FLUX.1-style VAE, flow matching with a fixed shift; Turbo is distilled to 8 steps without CFG."""

from __future__ import annotations

from .base import Family

CUT_LENGTH = 512  # tokens of the templated prompt the pipelines read (their max_sequence_length)
PATCH = 2  # the pipelines size latents for 2x2 patches and call the transformer with patch_size 2


class ZImage(Family):
    name = "z-image"
    label = "Z-Image"
    released = "2025-11"
    # ZImageControlNetPipeline and ZImageControlNetInpaintPipeline take no control_guidance_start/end (imagegen's
    # ControlNet passes both) and one net only; the inpaint one takes no strength. ZImageOmniPipeline needs a SigLIP
    # image encoder and a transformer with SigLIP features (Z-Image-Omni): neither is listed.
    pipelines = {
        ("text2image", None): "ZImagePipeline",
        ("image2image", None): "ZImageImg2ImgPipeline",
        ("inpaint", None): "ZImageInpaintPipeline",
    }
    flow = True
    # ZImageImg2ImgPipeline's image processor takes a tensor of 4 channels for latents (Z-Image's have 16): it resizes
    # them as an image to a multiple of 16 latents, so a latent hires pass fails unless its size is a multiple of
    # 128 px. The hires fix decodes and upscales the image instead.
    latent_hires = False
    default_multiple = 16
    denoiser = "transformer"
    default_preset = "z-image-turbo"
    cfg_help = ("classifier-free guidance; on when > 1, and the negative prompt acts through it (Z-Image's "
                "guidance_scale is --cfg minus 1); Turbo runs without: 1")
    # The pipelines always pass their own sigmas, as a Python list (and `mu`): FlowMatchHeun and DPMSolverMultistep
    # take no sigmas, and UniPC's flow shift does arithmetic on them that a list does not support (diffusers 0.42).
    unsupported_samplers = {
        "heun": "the Z-Image pipelines pass custom sigmas, which FlowMatchHeun does not accept",
        "dpmpp_2m": "the Z-Image pipelines pass custom sigmas, which DPMSolverMultistep does not accept",
        "unipc": "the Z-Image pipelines pass their sigmas as a list, which UniPCMultistep's flow shift cannot take",
    }
    # LoRAs in diffusers' or peft's layout, or the original and kohya layouts diffusers converts (layers,
    # noise_refiner and context_refiner blocks); other families' block names are refused.
    lora_keys = (r"(transformer\.|base_model\.model\.|diffusion_model\.)?(layers|noise_refiner|context_refiner)\.\d+\."
                 r"|lora_unet_(layers|noise_refiner|context_refiner)_\d+_")
    lora_not = r"unet\.|text_encoder_2\.|.*(transformer_blocks|double_blocks|single_blocks|joint_blocks)"
    weighted_encoders = ()  # A1111 weights act on CLIP only; the Qwen3 encoder reads the text as written
    token_limits = (("Qwen3", "tokenizer", CUT_LENGTH - 8, False),)  # 8: the chat template's own tokens
    encode_each_prompt = True

    # ---- sizes

    def latent_patch(self, read, scale: int) -> tuple[int, int | None]:
        # Rotary positions run to axes_lens patches a side (height and width axes; the first is the captions').
        config = read("transformer/config.json") or {}
        lens = config.get("axes_lens") or (1024, 512, 512)
        return PATCH, min(int(n) for n in lens[1:]) * PATCH * scale

    # ---- guidance

    def guidance_arguments(self, cfg: float, guidance: float | None, negatives: list[str]) -> dict:
        # The pipelines guide with cond + s x (cond - uncond), on when s > 0: classic CFG at w is s = w - 1.
        kwargs: dict = {"guidance_scale": max(cfg - 1.0, 0.0)}
        if cfg > 1:
            kwargs["negative_prompt"] = negatives if any(negatives) else None
        return kwargs

    # ---- prompts

    def prompt_limits(self, pipe) -> tuple[tuple[str, str, int | None, bool], ...]:
        # The pipelines cut the templated text, so the prompt's share is what the chat template leaves.
        return (("Qwen3", "tokenizer", self.chat_template_share(pipe, CUT_LENGTH, enable_thinking=True), False),)

    def encode_prompt(self, pipe, prompt: str, negative: str, device: str) -> dict:
        import torch

        with torch.no_grad():
            embeds, neg = pipe.encode_prompt(prompt=prompt, device=device, do_classifier_free_guidance=True,
                                             negative_prompt=negative or None)
        # The pipelines take a list of (tokens, width) tensors, padding cut off: one row each here, listed again
        # by embeddings_for (rows are grouped by length, so they stack).
        return {"prompt_embeds": embeds[0][None], "negative_prompt_embeds": neg[0][None]}

    def embeddings_for(self, embeddings: dict, cfg: float) -> dict:
        keep = [k for k in embeddings if cfg > 1 or not k.startswith("negative")]
        return {k: list(embeddings[k].unbind(0)) for k in keep}

    # ---- LoRA

    def denoiser_width(self, config: dict) -> int | None:
        return config.get("dim")  # ZImageTransformer2DModel's width (no heads x head dim in its config)

    def lora_widths(self, read) -> tuple[tuple[str, int], ...]:
        config = read("transformer/config.json") or {}
        dim = config.get("dim")  # attention's query projection takes the transformer's width
        return ((r".*attention[._]to_q[._](lora_A|lora_down)\.weight$", dim),) if isinstance(dim, int) else ()


FAMILY = ZImage()
