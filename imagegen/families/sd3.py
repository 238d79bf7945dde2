"""Stable Diffusion 3 and 3.5: an MMDiT transformer with CLIP-L, CLIP-G and T5 encoders, flow matching, classic CFG."""

from __future__ import annotations

import contextlib

from .base import Checkpoint, Family

_MMDIT = r"^(model\.diffusion_model\.)?joint_blocks\.\d+\."
_POS = r"^(model\.diffusion_model\.)?pos_embed$"
_DENOISER = r"^(model\.diffusion_model\.)?(joint_blocks|pos_embed|x_embedder|t_embedder|y_embedder|context_embedder|final_layer)"


class SD3(Family):
    name = "sd3"
    label = "SD3"
    released = "2024-06"
    pipelines = {
        ("text2image", None): "StableDiffusion3Pipeline",
        ("image2image", None): "StableDiffusion3Img2ImgPipeline",
        ("inpaint", None): "StableDiffusion3InpaintPipeline",
        # StableDiffusion3ControlNetInpaintingPipeline is not a ControlNet for inpaint: its net (Alimama's) takes the
        # image and mask as its map, so --control has no SD3 pipeline in img2img or inpaint.
        ("text2image", "controlnet"): "StableDiffusion3ControlNetPipeline",
    }
    flow = True
    default_multiple = 16
    gguf_architecture = "sd3"  # city96's GGUF files
    denoiser = "transformer"
    repeated_blocks = ("JointTransformerBlock",)  # SD3Transformer2DModel declares none in diffusers 0.42
    default_preset = "sd3"
    controlnet_class = "SD3ControlNetModel"
    ip_adapter_encoder = "SiglipVisionModel"
    ip_adapter_images = 1  # SD3's pipelines encode one reference image (a second breaks its batch shapes)
    # diffusers reads SD3 LoRAs in its own (peft) layout only: kohya's and SAI's joint_blocks files load nothing
    lora_keys = r"(transformer|text_encoder|text_encoder_2)\."
    lora_unread = (r"(lora_unet_|diffusion_model\.|model\.diffusion_model\.)joint_blocks",
                   "kohya's or SAI's SD3 layout, which diffusers does not convert (it reads SD3 LoRAs saved by its own "
                   "save_lora_weights or peft)")
    lora_not = r"unet\.|lora_unet_(down|up|input|output|double|single)_block|.*single_transformer_blocks|" \
               r"(diffusion_model\.)?(double|single)_blocks"
    weighted_encoders = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    clip_layer = "penultimate"
    # 3.5 large has 38 joint blocks, 3.5 medium the dual attention (attn2) of MMDiT-X, 3 medium neither.
    checkpoints = (
        Checkpoint("SD3.5 large", "stabilityai/stable-diffusion-3.5-large", "sd3.5-large",
                   (_MMDIT, r"^(model\.diffusion_model\.)?joint_blocks\.37\.")),
        Checkpoint("SD3.5 medium", "stabilityai/stable-diffusion-3.5-medium", "sd3.5-medium",
                   (_MMDIT, r"^(model\.diffusion_model\.)?joint_blocks\.\d+\.x_block\.attn2\.")),
        Checkpoint("SD3.5 medium", "stabilityai/stable-diffusion-3.5-medium", "sd3.5-medium", (_MMDIT,),
                   shapes=((_POS, 1, 384 * 384),)),  # its positional embedding covers 384x384 patches
        Checkpoint("SD3 medium", "stabilityai/stable-diffusion-3-medium-diffusers", "sd3", (_MMDIT,)),
    )
    checkpoint_parts = {"transformer": _DENOISER, "vae": r"^first_stage_model\.",
                        "text_encoder": r"^text_encoders\.clip_l\.", "text_encoder_2": r"^text_encoders\.clip_g\.",
                        "text_encoder_3": r"^text_encoders\.t5xxl\."}
    max_sequence_length = 256  # T5 tokens the pipeline reads (its call default)
    token_limits = (("CLIP", "tokenizer", None, True), ("T5", "tokenizer_3", max_sequence_length - 1, False))

    def weighted_embeddings(self, pipe, encoded: list, plain: str, plain_negative: str, *,
                            negative_empty: bool) -> dict:
        """CLIP-L and CLIP-G weighted and side by side, padded to T5's width and followed by T5's tokens of the plain
        text, as StableDiffusion3Pipeline.encode_prompt lays them out."""
        import torch

        def joint(clip, text: str):
            t5 = pipe._get_t5_prompt_embeds(prompt=text, max_sequence_length=self.max_sequence_length,
                                            device=clip.device)
            clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
            return torch.cat([clip, t5.to(clip.dtype)], dim=-2)

        first, second = encoded
        return {
            "prompt_embeds": joint(torch.cat([first.prompt, second.prompt], dim=-1), plain),
            "negative_prompt_embeds": joint(torch.cat([first.negative, second.negative], dim=-1), plain_negative),
            "pooled_prompt_embeds": torch.cat([first.prompt_pooled, second.prompt_pooled], dim=-1),
            "negative_pooled_prompt_embeds": torch.cat([first.negative_pooled, second.negative_pooled], dim=-1),
        }

    def lora_widths(self, read) -> tuple[tuple[str, int], ...]:
        return self.transformer_lora_widths(read)

    def latent_patch(self, read, scale: int) -> tuple[int, int | None]:
        transformer = read("transformer/config.json") or {}
        patch = int(transformer.get("patch_size", 2))
        return patch, int(transformer.get("pos_embed_max_size", 96)) * patch * scale  # its positional embedding

    def encode_prompt(self, pipe, prompt: str, negative: str, device: str) -> dict:
        import torch

        with torch.no_grad():
            embeds, neg, pooled, neg_pooled = pipe.encode_prompt(
                prompt=prompt, prompt_2=None, prompt_3=None, device=device, do_classifier_free_guidance=True,
                negative_prompt=negative or None)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": neg, "pooled_prompt_embeds": pooled,
                "negative_pooled_prompt_embeds": neg_pooled}

    @contextlib.contextmanager
    def controlnet_call(self, pipe, seeds: list[int]):
        """SD3's ControlNet pipeline VAE-encodes each map with `latent_dist.sample()` and no generator, drawing from the
        global torch RNG: the same seed then gives different images. While this is active, those draws come from one
        generator per image, seeded from the image's seed and the net's position: reproducible, and independent of
        the micro-batch (the classifier-free-guidance copy of row i draws from row i's generator too)."""
        import torch

        vae = pipe.vae
        original = vae.encode
        calls = [0]

        def encode(x, *args, **kwargs):
            out = original(x, *args, **kwargs)
            dist = out.latent_dist if hasattr(out, "latent_dist") else out[0]
            net = calls[0]
            calls[0] += 1
            generators = [torch.Generator("cpu").manual_seed((seed * 1_000_003 + 7919 * (net + 1)) % 2**63)
                          for seed in seeds]
            rows = x.shape[0]
            per_row = (generators * (rows // len(generators) + 1))[:rows] if rows != len(generators) else generators
            sample = dist.sample
            dist.sample = lambda generator=None: sample(generator=per_row)
            return out

        vae.encode = encode
        try:
            yield
        finally:
            del vae.encode  # the instance attribute: the class's method shows through again

    def ip_adapter_processor(self, encoder, source: str, kwargs: dict):
        import transformers

        try:
            return transformers.SiglipImageProcessor.from_pretrained(source, **kwargs)
        except OSError:  # a folder without preprocessor_config.json: SigLIP's defaults at its resolution
            size = encoder.config.image_size
            return transformers.SiglipImageProcessor(size={"height": size, "width": size})


FAMILY = SD3()
