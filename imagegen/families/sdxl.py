"""Stable Diffusion XL: a UNet with two CLIP text encoders, epsilon (or v) prediction, classic CFG."""

from __future__ import annotations

from .base import Checkpoint, Family

_UNET = r"^model\.diffusion_model\.label_emb\.0\.0\.weight$"  # the size and crop embedding only SDXL has
_SDXL = r"^(model\.diffusion_model\.label_emb\.|conditioner\.embedders\.)"
_BASE, _REFINER = "stabilityai/stable-diffusion-xl-base-1.0", "stabilityai/stable-diffusion-xl-refiner-1.0"
# The refiner conditions on an aesthetic score (its 2560-wide size embedding) that only diffusers' img2img pipeline
# built for it passes; imagegen's SDXL pipelines pass the base's six size values.
_REFINER_WHY = ("the refiner conditions on an aesthetic score, which imagegen's SDXL pipelines do not pass; run an "
                "SDXL base checkpoint (the refiner is not supported yet)")


class SDXL(Family):
    name = "sdxl"
    label = "SDXL"
    released = "2023-07"
    pipelines = {
        ("text2image", None): "StableDiffusionXLPipeline",
        ("image2image", None): "StableDiffusionXLImg2ImgPipeline",
        ("inpaint", None): "StableDiffusionXLInpaintPipeline",
        ("text2image", "controlnet"): "StableDiffusionXLControlNetPipeline",
        ("image2image", "controlnet"): "StableDiffusionXLControlNetImg2ImgPipeline",
        ("inpaint", "controlnet"): "StableDiffusionXLControlNetInpaintPipeline",
    }
    pipeline_multiple = 8  # StableDiffusionXLPipeline.check_inputs
    default_preset = "sdxl"
    class_presets = {"StableDiffusionXLInpaintPipeline": "sdxl-inpaint"}
    controlnet_class = "ControlNetModel"
    controlnet_signature = {"addition_embed_type": "text_time"}  # SDXL's UNet conditions on size and crop
    # The txt2img ControlNet pipeline takes the map as `image`; its img2img and inpaint ones take the init image
    # there and the map as `control_image`.
    control_map_arguments = {"text2image": "image"}
    ip_adapter_encoder = "CLIPVisionModelWithProjection"
    embedding_keys = {"clip_l": ("tokenizer", "text_encoder"), "clip_g": ("tokenizer_2", "text_encoder_2")}
    lora_keys = r"(unet|text_encoder|text_encoder_2)\.|lora_te[12]_|lora_unet_(input|middle|output|down|mid|up)_block"
    lora_not = r"lora_te_|transformer\.|lora_unet_(double|single|joint)_blocks"
    weighted_encoders = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    clip_layer = "penultimate"
    # The base conditions on CLIP-L (embedders.0, HF layout) and OpenCLIP bigG (embedders.1); the refiner on bigG
    # alone (embedders.0, OpenCLIP layout). A UNet-only file is told by its size-embedding width (2816 / 2560).
    checkpoints = (
        Checkpoint("SDXL refiner", _REFINER, "sdxl", (r"^conditioner\.embedders\.0\.model\.",),
                   absent=(r"^conditioner\.embedders\.1\.",), unsupported=_REFINER_WHY),
        Checkpoint("SDXL refiner", _REFINER, "sdxl", (_UNET,), absent=(r"^conditioner\.",), shapes=((_UNET, 1, 2560),),
                   unsupported=_REFINER_WHY),
        Checkpoint("SDXL inpainting", "diffusers/stable-diffusion-xl-1.0-inpainting-0.1", "sdxl-inpaint", (_SDXL,),
                   shapes=((r"^model\.diffusion_model\.input_blocks\.0\.0\.weight$", 1, 9),)),
        Checkpoint("SDXL base", _BASE, "sdxl", (_SDXL,)),
    )
    checkpoint_parts = {"unet": r"^model\.diffusion_model\.", "vae": r"^first_stage_model\.",
                        "text_encoder": r"^conditioner\.embedders\.0\.transformer\.",
                        "text_encoder_2": r"^conditioner\.embedders\.(1|0)\.model\."}

    def weighted_embeddings(self, pipe, encoded: list, plain: str, plain_negative: str, *,
                            negative_empty: bool) -> dict:
        import torch

        first, second = encoded
        embeds = torch.cat([first.prompt, second.prompt], dim=-1)
        negative = torch.cat([first.negative, second.negative], dim=-1)
        negative_pooled = second.negative_pooled
        if negative_empty and pipe.config.get("force_zeros_for_empty_prompt", False):
            # what the pipeline itself does with an empty negative prompt (SDXL base's config asks for zeros)
            negative, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(second.prompt_pooled)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative,
                "pooled_prompt_embeds": second.prompt_pooled, "negative_pooled_prompt_embeds": negative_pooled}


FAMILY = SDXL()
