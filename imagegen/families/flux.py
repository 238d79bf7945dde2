"""FLUX.1 (dev, schnell): a guidance-distilled MMDiT with CLIP-L and T5, flow matching with resolution shifting."""

from __future__ import annotations

from .base import Checkpoint, Family

_DIT = r"^(model\.diffusion_model\.)?double_blocks\.\d+\.img_"  # BFL's release files, and ComfyUI's prefix
# Chroma and FLUX.2 keep FLUX.1's block names but not its architecture
_OTHERS = r"^(model\.diffusion_model\.)?(distilled_guidance_layer|double_stream_modulation_img)\."
_GUIDED = r"^(model\.diffusion_model\.)?guidance_in\."  # dev's guidance embedding; schnell has none
_IMG_IN = r"^(model\.diffusion_model\.)?img_in\.weight$"
_DENOISER = r"^(model\.diffusion_model\.)?(double_blocks|single_blocks|img_in|txt_in|time_in|vector_in|guidance_in|final_layer)\."


class Flux(Family):
    name = "flux"
    label = "Flux"
    released = "2024-08"
    pipelines = {
        ("text2image", None): "FluxPipeline",
        ("image2image", None): "FluxImg2ImgPipeline",
        ("inpaint", None): "FluxInpaintPipeline",
        ("text2image", "controlnet"): "FluxControlNetPipeline",
        ("image2image", "controlnet"): "FluxControlNetImg2ImgPipeline",
        ("inpaint", "controlnet"): "FluxControlNetInpaintPipeline",
        ("inpaint", "fill"): "FluxFillPipeline",  # FLUX.1-Fill-dev's own pipeline: a preset names it (flux-fill)
        ("edit", "kontext"): "FluxKontextPipeline",  # FLUX.1 Kontext's: a preset names it (flux-kontext)
    }
    flow = True
    default_multiple = 16
    mag_ratios = "FLUX_MAG_RATIOS"  # calibrated on FLUX.1-dev by MagCache's authors
    attention_blocks = (r"transformer_blocks.*attn", r"single_transformer_blocks.*attn")
    gguf_architecture = "flux"  # city96's GGUF files
    denoiser = "transformer"
    default_preset = "flux-schnell"
    class_presets = {"FluxFillPipeline": "flux-fill", "FluxKontextPipeline": "flux-kontext"}
    edit_images = 1  # Kontext reads one reference image
    cfg_help = ("Flux is guidance-distilled: 1 (the default) is off; > 1 turns on true CFG "
                "(true_cfg_scale, with the negative prompt; a second transformer pass per step, about 2x cost). "
                "Flux-dev's distilled guidance embedding is --guidance")
    distilled_guidance = True
    unsupported_samplers = {"heun": "FluxPipeline passes custom sigmas, which FlowMatchHeun does not accept"}
    flow_note = ", dynamic shifting"
    controlnet_class = "FluxControlNetModel"
    ip_adapter_encoder = "CLIPVisionModelWithProjection"
    ip_adapter_cfg = 4.0  # XLabs' published example runs its adapter with true_cfg_scale 4
    # CLIP-L gives Flux only its pooled vector, which token weights cannot reach: both encoders read the text with
    # the weights removed (imagegen.prompting), and both cut it.
    lora_keys = (r"(transformer|text_encoder|diffusion_model|base_model\.model)\.|lora_unet_(double|single)_blocks|"
                 r"lora_transformer_|lora_te1?_|(double|single)_blocks\.")
    lora_not = r"unet\.|text_encoder_2\.|lora_unet_(down|up|mid|input|output|middle)_block|.*joint_blocks"
    weighted_encoders = ()
    token_limits = (("CLIP (pooled)", "tokenizer", None, False), ("T5", "tokenizer_2", 511, False))
    # Fill takes the masked image and mask in its input (384 channels); dev has a guidance embedding, schnell none.
    checkpoints = (
        Checkpoint("FLUX.1 Fill", "black-forest-labs/FLUX.1-Fill-dev", "flux-fill", (_DIT, _GUIDED),
                   absent=(_OTHERS,), shapes=((_IMG_IN, 1, 384),)),
        Checkpoint("FLUX.1 dev", "black-forest-labs/FLUX.1-dev", "flux-dev", (_DIT, _GUIDED), absent=(_OTHERS,)),
        Checkpoint("FLUX.1 schnell", "black-forest-labs/FLUX.1-schnell", "flux-schnell", (_DIT,), absent=(_GUIDED, _OTHERS)),
    )
    checkpoint_parts = {"transformer": _DENOISER, "vae": r"^(vae|first_stage_model)\.",
                        "text_encoder": r"^text_encoders\.clip_l\.", "text_encoder_2": r"^text_encoders\.t5xxl\."}

    def convert_checkpoint(self, load, read) -> dict | None:
        config = read("transformer/config.json") or {}
        width = config.get("num_attention_heads", 24) * config.get("attention_head_dim", 128)
        if width == 3072:
            return None  # FLUX.1's own width, which diffusers' converter assumes
        import types

        from diffusers.loaders import single_file_utils

        # diffusers' converter hard-codes FLUX.1's width (inner_dim = 3072) to split the fused qkv+mlp tensors, so a
        # narrower model (a distilled or a test one) fails to split. Run diffusers' own converter with the model's
        # width in place of that constant rather than keep a copy of it.
        convert = single_file_utils.convert_flux_transformer_checkpoint_to_diffusers
        code = convert.__code__
        consts = tuple(width if type(c) is int and c == 3072 else c for c in code.co_consts)
        patched = types.FunctionType(code.replace(co_consts=consts), convert.__globals__, convert.__name__)
        return patched(load())

    def edit_size(self, sizes: list[tuple[int, int]], multiple: int) -> tuple[int, int, str]:
        # Kontext was trained at these resolutions; its pipeline moves the reference to the one nearest its aspect
        # ratio, and BFL's reference code makes the output that size too.
        from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

        width, height = sizes[0]
        _, w, h = min((abs(width / height - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
        return (w // multiple * multiple, h // multiple * multiple,
                "Kontext's preferred resolution nearest the image's aspect ratio")

    def edit_arguments(self, images: list, width: int, height: int, count: int) -> dict:
        # The pipeline would scale any --size to its max_area (1 MP) and the reference to a preferred resolution:
        # the reference goes in at the output's size (what its auto-resize does at the default size) and max_area
        # is the output's, so --size is honoured exactly.
        from PIL import Image

        reference = images[0].resize((width, height), Image.LANCZOS)
        return {"image": reference, "max_area": width * height, "_auto_resize": False}

    def lora_widths(self, read) -> tuple[tuple[str, int], ...]:
        return self.transformer_lora_widths(read)

    def latent_patch(self, read, scale: int) -> tuple[int, int | None]:
        return 2, None  # Flux packs latents in 2x2 patches

    def guidance_embedded(self, read) -> bool | None:
        config = read("transformer/config.json")  # FLUX.1-dev has the embedding; timestep-distilled schnell not
        return bool(config.get("guidance_embeds")) if config else None

    def guidance_arguments(self, cfg: float, guidance: float | None, negatives: list[str]) -> dict:
        # Flux's guidance_scale is a distilled embedding (ignored by schnell); real CFG is true_cfg_scale, passed
        # only when on, as some Flux pipelines (Fill, the ControlNet img2img and inpaint ones) have none.
        kwargs = {"guidance_scale": guidance if guidance is not None else 3.5}
        if cfg > 1:
            kwargs.update(true_cfg_scale=cfg, negative_prompt=negatives)
        return kwargs

    def cfg_problem(self, pipeline_class: str | None, cfg: float) -> str | None:
        if cfg <= 1 or pipeline_class is None:
            return None
        from ..loading import pipeline_parameters  # only for a --cfg above 1: the class's signature says

        if "true_cfg_scale" in pipeline_parameters(pipeline_class):
            return None
        return f"--cfg {cfg:g}: {pipeline_class} has no true CFG; use --cfg 1 (its guidance is --guidance)"

    def unpacked_latents(self, pipe, latents, width: int, height: int):
        return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)  # Flux packs 2x2 patches

    def cfg_notes(self, cfg: float, negative: str) -> list[str]:
        if cfg <= 1:
            return []
        return [f"flux: --cfg {cfg:g} > 1 turns on true classifier-free guidance (true_cfg_scale) with the "
                f"negative prompt{' (empty)' if not negative else ''}; each step runs the transformer twice"]

    def encode_prompt(self, pipe, prompt: str, negative: str, device: str) -> dict:
        import torch

        with torch.no_grad():
            embeds, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device)
            neg, neg_pooled, _ = pipe.encode_prompt(prompt=negative or "", prompt_2=None, device=device)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled,
                "negative_prompt_embeds": neg, "negative_pooled_prompt_embeds": neg_pooled}

    def embeddings_for(self, embeddings: dict, cfg: float) -> dict:
        # Flux takes its negative embeddings only for true CFG (cfg > 1), as txt2img passes its negative prompt.
        if cfg <= 1:
            return {k: v for k, v in embeddings.items() if not k.startswith("negative")}
        return embeddings

    def flow_solver_kwargs(self, native: dict, shift: float) -> dict:
        return self.shifted_solver_kwargs(native, shift)  # FluxPipeline always passes `mu` to set_timesteps

    def ip_adapter_load_kwargs(self) -> dict:
        return {"image_encoder_pretrained_model_name_or_path": None}  # imagegen registers the encoder itself


FAMILY = Flux()
