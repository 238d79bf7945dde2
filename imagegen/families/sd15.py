"""Stable Diffusion 1.x and 2.x: a UNet with one CLIP text encoder and classic CFG. Epsilon or v-prediction comes
from the model's own scheduler config (SD 2.x checkpoints are v-prediction), which every scheduler swap starts from.
The safety checker is left out."""

from __future__ import annotations

from .base import Family


class SD15(Family):
    name = "sd15"
    label = "SD 1.5"
    released = "2022-10"
    pipelines = {
        ("text2image", None): "StableDiffusionPipeline",
        ("image2image", None): "StableDiffusionImg2ImgPipeline",
        ("inpaint", None): "StableDiffusionInpaintPipeline",
        ("text2image", "controlnet"): "StableDiffusionControlNetPipeline",
        ("image2image", "controlnet"): "StableDiffusionControlNetImg2ImgPipeline",
        ("inpaint", "controlnet"): "StableDiffusionControlNetInpaintPipeline",
    }
    pipeline_multiple = 8  # StableDiffusionPipeline.check_inputs
    default_preset = "sd15"
    # No safety checker: its weights are never loaded, and requires_safety_checker=False keeps diffusers quiet.
    load_kwargs = {"safety_checker": None, "requires_safety_checker": False}
    controlnet_class = "ControlNetModel"
    controlnet_signature = {"addition_embed_type": None}  # SDXL's nets add size and crop embeddings
    control_map_arguments = {"text2image": "image"}
    ip_adapter_encoder = "CLIPVisionModelWithProjection"
    embedding_keys = {"": ("tokenizer", "text_encoder")}
    lora_keys = r"(unet|text_encoder)\.|lora_te_|lora_unet_(down|mid|up)_block"
    lora_not = r"text_encoder_2\.|lora_te[12]_|lora_unet_(input|middle|output)_block|transformer\."

    def encode_prompt(self, pipe, prompt: str, negative: str, device: str) -> dict:
        import torch

        with torch.no_grad():
            embeds, neg = pipe.encode_prompt(prompt, device, 1, True, negative_prompt=negative or None)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": neg}


FAMILY = SD15()
