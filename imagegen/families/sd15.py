"""Stable Diffusion 1.x and 2.x: a UNet with one CLIP text encoder and classic CFG. Epsilon or v-prediction comes
from the model's own scheduler config (SD 2.x checkpoints are v-prediction), which every scheduler swap starts from.
The safety checker is left out."""

from __future__ import annotations

from .base import Checkpoint, Family

_UNET = r"^model\.diffusion_model\.(input_blocks|middle_block|output_blocks)\."
_TO_K = r"^model\.diffusion_model\.input_blocks\.\d+\.1\.transformer_blocks\.0\.attn2\.to_k\.weight$"
_IN = r"^model\.diffusion_model\.input_blocks\.0\.0\.weight$"  # an inpainting UNet reads 9 channels: latents, mask, image


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
    class_presets = {"StableDiffusionInpaintPipeline": "sd15-inpaint"}
    # No safety checker: its weights are never loaded, and requires_safety_checker=False keeps diffusers quiet.
    load_kwargs = {"safety_checker": None, "requires_safety_checker": False}
    controlnet_class = "ControlNetModel"
    controlnet_signature = {"addition_embed_type": None}  # SDXL's nets add size and crop embeddings
    control_map_arguments = {"text2image": "image"}
    ip_adapter_encoder = "CLIPVisionModelWithProjection"
    embedding_keys = {"": ("tokenizer", "text_encoder")}
    lora_keys = r"(unet|text_encoder)\.|lora_te_|lora_unet_(down|mid|up)_block"
    lora_not = r"text_encoder_2\.|lora_te[12]_|lora_unet_(input|middle|output)_block|transformer\."
    # SD 2.x carries OpenCLIP (cond_stage_model.model.) and a 1024-wide cross-attention; it is v-prediction at 768
    # (the 512 "base" is epsilon: give it --config). A UNet-only file is told by the cross-attention width.
    checkpoints = (
        Checkpoint("SD 2.x", "stabilityai/stable-diffusion-2-1", "sd2", (r"^cond_stage_model\.model\.",)),
        Checkpoint("SD 2.x", "stabilityai/stable-diffusion-2-1", "sd2", (_UNET,), absent=(r"^cond_stage_model\.",),
                   shapes=((_TO_K, 1, 1024),)),
        Checkpoint("SD 1.x inpainting", "stable-diffusion-v1-5/stable-diffusion-inpainting", "sd15-inpaint", (_UNET,),
                   absent=(r"^model\.diffusion_model\.label_emb\.", r"^conditioner\."), shapes=((_IN, 1, 9),)),
        Checkpoint("SD 1.x", "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd15", (_UNET,),
                   absent=(r"^model\.diffusion_model\.label_emb\.", r"^conditioner\.", r"^cond_stage_model\.model\.")),
    )
    checkpoint_parts = {"unet": r"^model\.diffusion_model\.", "vae": r"^first_stage_model\.",
                        "text_encoder": r"^cond_stage_model\."}

    def encode_prompt(self, pipe, prompt: str, negative: str, device: str) -> dict:
        import torch

        with torch.no_grad():
            embeds, neg = pipe.encode_prompt(prompt, device, 1, True, negative_prompt=negative or None)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": neg}


FAMILY = SD15()
