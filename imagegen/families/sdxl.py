"""Stable Diffusion XL: a UNet with two CLIP text encoders, epsilon (or v) prediction, classic CFG."""

from __future__ import annotations

from .base import Family


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
    controlnet_class = "ControlNetModel"
    controlnet_signature = {"addition_embed_type": "text_time"}  # SDXL's UNet conditions on size and crop
    # The txt2img ControlNet pipeline takes the map as `image`; its img2img and inpaint ones take the init image
    # there and the map as `control_image`.
    control_map_arguments = {"text2image": "image"}
    ip_adapter_encoder = "CLIPVisionModelWithProjection"


FAMILY = SDXL()
