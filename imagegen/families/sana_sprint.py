"""SANA-Sprint (NVIDIA): a linear-attention DiT distilled into a TrigFlow consistency model (sCM) that draws in 1-4
steps, with a Gemma-2 text encoder, a 32x DC-AE and an embedded (distilled) guidance scale instead of CFG."""

from __future__ import annotations

from .base import Family

GUIDANCE = 4.5  # the pipeline's default and the model card's: the guidance embedding's scale without --guidance
MAX_SEQUENCE_LENGTH = 300  # Gemma tokens the pipeline keeps per prompt (its call default)


class SanaSprint(Family):
    name = "sana-sprint"
    label = "SANA-Sprint"
    released = "2025-03"
    pipelines = {
        ("text2image", None): "SanaSprintPipeline",
        ("image2image", None): "SanaSprintImg2ImgPipeline",
    }
    # A TrigFlow model: the registry's SCM sampler (SCMScheduler) is the only one that drives it.
    flow = False
    schedule_kind = "trigflow"
    latent_hires = False  # its img2img pipeline resizes an image tensor to pixel size, and scales by sigma_data
    foreign_scheduler = ("not a TrigFlow consistency (sCM) scheduler: SANA-Sprint's pipelines give set_timesteps "
                         "max_timesteps and intermediate_timesteps and read the scheduler's sigma_data, which only "
                         "SCMScheduler has")
    default_multiple = 32  # the DC-AE's 32x, patch size 1
    pipeline_multiple = 32  # both pipelines' check_inputs refuse any other height or width
    denoiser = "transformer"
    repeated_blocks = ("SanaTransformerBlock",)  # SanaTransformer2DModel declares none in diffusers 0.42
    default_preset = "sana-sprint"
    cfg_help = ("SANA-Sprint is guidance-distilled and has no CFG (nor a negative prompt): keep --cfg 1; its "
                "guidance embedding is --guidance (4.5 by default)")
    distilled_guidance = True
    # SanaLoraLoaderMixin reads LoRAs of the transformer in diffusers' (peft) layout; Sana's blocks are told from
    # PixArt's by their GLUMBConv feed-forward (ff.conv_*), from SD3's and Flux's by attn1/attn2.
    lora_keys = r"(transformer\.|base_model\.model\.)?transformer_blocks\.\d+\.(attn[12]\.|ff\.conv_)"
    lora_not = (r"unet\.|text_encoder|lora_unet_|lora_te|.*(single_transformer_blocks|joint_blocks|double_blocks)|"
                r".*\.(attn|ff\.net)\.")  # SD3's and Flux's attention and feed-forward (SD3.5 medium has attn2 too)
    weighted_encoders = ()  # no CLIP: A1111 weights cannot act; Gemma reads the text with them removed
    # The pipeline puts its complex human instruction before the prompt and cuts the whole to the instruction's
    # tokens (with BOS) + max_sequence_length - 2; the instruction's last token, the space after "User Prompt:",
    # joins the prompt's first word, so the prompt keeps 299 of its own tokens.
    token_limits = (("Gemma-2", "tokenizer", MAX_SEQUENCE_LENGTH - 1, False),)
    encode_each_prompt = True

    # ---- sizes

    def vae_scale(self, read) -> int | None:
        # AutoencoderDC has no block_out_channels; the pipelines read its encoder's stages (2 ** (stages - 1)).
        vae = read("vae/config.json")
        stages = vae.get("encoder_block_out_channels") if vae else None
        return 2 ** (len(stages) - 1) if stages else None

    def latent_patch(self, read, scale: int) -> tuple[int, int | None]:
        transformer = read("transformer/config.json") or {}
        # Sprint has no positional embedding (interpolation_scale None): no largest side
        return int(transformer.get("patch_size") or 1), None

    # ---- guidance

    def guidance_embedded(self, read) -> bool | None:
        config = read("transformer/config.json")
        return bool(config.get("guidance_embeds")) if config else None

    def guidance_arguments(self, cfg: float, guidance: float | None, negatives: list[str]) -> dict:
        # guidance_scale is the distilled guidance embedding; the pipelines take no negative prompt. The resolution
        # binning is off so the run is at --size (the size rule, the memory plan and the record say so), not at the
        # nearest 1024-px aspect bin resized afterwards; it also only accepts a transformer of sample_size 32.
        return {"guidance_scale": GUIDANCE if guidance is None else guidance, "use_resolution_binning": False}

    def schedule_arguments(self, steps: int) -> dict:
        """The call arguments that depend on the step count: SCMScheduler's trained intermediate timestep (1.3) is
        allowed at 2 steps only (the pipeline refuses it otherwise); any other count, or an unknown one, spaces
        its timesteps evenly from max_timesteps (pi/2) down to 0."""
        return {} if steps == 2 else {"intermediate_timesteps": None}

    def cfg_problem(self, pipeline_class: str | None, cfg: float) -> str | None:
        if cfg <= 1:
            return None
        return (f"--cfg {cfg:g}: SANA-Sprint is guidance-distilled and {pipeline_class or 'its pipeline'} has no "
                f"classifier-free guidance; use --cfg 1, and --guidance for its guidance embedding "
                f"({GUIDANCE:g} by default)")

    def cfg_notes(self, cfg: float, negative: str) -> list[str]:
        if not negative:
            return []
        return ["sana-sprint: the negative prompt is ignored (SANA-Sprint's pipelines take none: no CFG)"]

    # ---- prompts

    def encode_prompt(self, pipe, prompt: str, negative: str, device: str) -> dict:
        import inspect

        import torch

        # As the pipeline's own call encodes it: with the call's default complex human instruction (encode_prompt's
        # own default is None, which would give other embeddings) and sequence length.
        defaults = inspect.signature(type(pipe).__call__).parameters
        with torch.no_grad():
            embeds, mask = pipe.encode_prompt(
                prompt, num_images_per_prompt=1, device=device,
                max_sequence_length=defaults["max_sequence_length"].default,
                complex_human_instruction=defaults["complex_human_instruction"].default)
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask}

    # ---- LoRA

    def lora_widths(self, read) -> tuple[tuple[str, int], ...]:
        config = read("transformer/config.json") or {}
        heads, dim = config.get("num_attention_heads"), config.get("attention_head_dim")
        if not (isinstance(heads, int) and isinstance(dim, int)):
            return ()
        return ((r".*attn1[._]to_q[._](lora_A|lora_down)\.weight$", heads * dim),)  # self-attention: inner width


FAMILY = SanaSprint()
