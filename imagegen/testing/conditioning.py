"""Tiny ControlNets and IP-Adapters matched to the tiny pipelines. They are made from each tiny pipeline's own
denoiser, chosen by the denoiser's class (a UNet, SD3's or Flux's transformer), so a new family with one of these
denoisers gets them with no code here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..families import FAMILIES
from .parts import _private_rng, _quiet_bars, _seed
from .pipelines import TINY

def _wake(module, seed: int) -> None:
    """ControlNets start with zero convolutions (no effect until trained): give every all-zero weight small noise."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() > 1 and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def _unet_net(cls, unet):
    # 4 conditioning channels -> 3 stride-2 convolutions: the map's pixels come down to the latent size.
    return cls.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))


def _sd3_net(cls, transformer):
    return cls.from_transformer(transformer, num_layers=1, num_extra_conditioning_channels=0)  # map VAE-encoded


def _flux_net(cls, transformer):
    return cls.from_transformer(transformer, num_layers=1, num_single_layers=1,
                                attention_head_dim=transformer.config.attention_head_dim,
                                num_attention_heads=transformer.config.num_attention_heads)


# How a ControlNet is made from a denoiser, by the denoiser's class.
_NETS = {"UNet2DConditionModel": _unet_net, "SD3Transformer2DModel": _sd3_net, "FluxTransformer2DModel": _flux_net}


def _denoiser(family: str, seed: int):
    return getattr(TINY[family](seed), FAMILIES[family].denoiser)


def _tiny_controlnet(family: str, seed: int) -> Any:
    """A net made from the tiny pipeline's own denoiser, as ControlNets are initialised (config and weights copied)."""
    import diffusers

    denoiser = _denoiser(family, seed)
    net = _NETS[type(denoiser).__name__](getattr(diffusers, FAMILIES[family].controlnet_class), denoiser)
    _wake(net, seed)
    return net.eval()


def build_tiny_controlnet(path: str | os.PathLike, family: str, *, seed: int = 0, safetensors: bool = True) -> Path:
    """Build and save a tiny ControlNet for the tiny ``family`` pipeline (diffusers folder layout); returns the folder."""
    import warnings

    with _private_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # FluxControlNetModel's FluxPosEmbed deprecation notice
        net = _tiny_controlnet(family, seed)
        out = Path(path)
        net.save_pretrained(out, safe_serialization=safetensors)
    return out


# IP-Adapter image encoders: CLIP vision with projection (SDXL's ViT-bigG, Flux's CLIP-L) or SigLIP (SD3.5).
_ENCODER_IMAGE_SIZE = 32


def _tiny_image_encoder(family: str, seed: int) -> tuple[Any, Any]:
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection,
                              SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel)

    _seed(seed, 20)
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=_ENCODER_IMAGE_SIZE, patch_size=8)
    if FAMILIES[family].ip_adapter_encoder == "SiglipVisionModel":
        encoder = SiglipVisionModel(SiglipVisionConfig(**common))
        processor = SiglipImageProcessor(size={"height": _ENCODER_IMAGE_SIZE, "width": _ENCODER_IMAGE_SIZE})
    else:
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**common, projection_dim=32))
        processor = CLIPImageProcessor(size=_ENCODER_IMAGE_SIZE, crop_size=_ENCODER_IMAGE_SIZE)
    return encoder.eval(), processor


def _linear(out_features: int, in_features: int, bias: bool) -> dict:
    import torch

    layer = torch.nn.Linear(in_features, out_features, bias=bias)
    return {k: v.detach().clone() for k, v in layer.state_dict().items()}


def _unet_adapter(unet, out: dict) -> None:
    """h94's IP-Adapter layout (sd15, sdxl): image_proj.proj/norm, ip_adapter.<id>.to_{k,v}_ip (ids 1, 3, ...)."""
    from diffusers.models.embeddings import ImageProjection

    cross = unet.config.cross_attention_dim
    proj = ImageProjection(cross_attention_dim=cross, image_embed_dim=32, num_image_text_embeds=4)
    for k, v in proj.state_dict().items():
        out["image_proj." + k.replace("image_embeds", "proj")] = v
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        block = name.split(".")[0]
        if block == "mid_block":
            hidden = unet.config.block_out_channels[-1]
        elif block == "up_blocks":
            hidden = list(reversed(unet.config.block_out_channels))[int(name.split(".")[1])]
        else:
            hidden = unet.config.block_out_channels[int(name.split(".")[1])]
        for kind in ("to_k_ip", "to_v_ip"):
            out[f"ip_adapter.{key_id}.{kind}.weight"] = _linear(hidden, cross, False)["weight"]
        key_id += 2


def _flux_adapter(transformer, out: dict) -> None:
    """XLabs' flux-ip-adapter layout: ip_adapter_proj_model.*, double_blocks.<i>.processor.*."""
    from diffusers.models.embeddings import ImageProjection

    proj = ImageProjection(cross_attention_dim=transformer.config.joint_attention_dim, image_embed_dim=32,
                           num_image_text_embeds=4)
    for k, v in proj.state_dict().items():
        out["ip_adapter_proj_model." + k.replace("image_embeds", "proj")] = v
    inner = transformer.inner_dim
    for i in range(transformer.config.num_layers):
        for kind in ("k", "v"):
            for k, v in _linear(inner, transformer.config.joint_attention_dim, True).items():
                out[f"double_blocks.{i}.processor.ip_adapter_double_stream_{kind}_proj.{k}"] = v


def _sd3_adapter(transformer, out: dict) -> None:
    """InstantX's SD3.5-Large-IP-Adapter layout, with diffusers' own module names."""
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterTimeImageProjection

    dim = transformer.config.attention_head_dim * transformer.config.num_attention_heads
    hidden = 64  # the resampler width; the loader infers heads as to_q.out_features // 64
    proj = IPAdapterTimeImageProjection(embed_dim=32, output_dim=dim, hidden_dim=hidden, heads=1, num_queries=4,
                                        timestep_in_dim=32)
    for k, v in proj.state_dict().items():
        out["image_proj." + k] = v
    for i, _ in enumerate(transformer.attn_processors):
        processor = SD3IPAdapterJointAttnProcessor2_0(hidden_size=dim, ip_hidden_states_dim=dim,
                                                      head_dim=transformer.config.attention_head_dim,
                                                      timesteps_emb_dim=hidden)
        for k, v in processor.state_dict().items():
            out[f"ip_adapter.{i}.{k}"] = v


# How an adapter's tensors are laid out, by the denoiser's class.
_ADAPTERS = {"UNet2DConditionModel": _unet_adapter, "SD3Transformer2DModel": _sd3_adapter,
             "FluxTransformer2DModel": _flux_adapter}


def _ip_adapter_state_dict(family: str, seed: int) -> dict[str, Any]:
    """A tiny adapter's tensors, keyed as the published files key them (what load_ip_adapter reads)."""
    _seed(seed, 30)
    out: dict[str, Any] = {}
    denoiser = _denoiser(family, seed)
    _ADAPTERS[type(denoiser).__name__](denoiser, out)
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


IP_ADAPTER_WEIGHT = "ip-adapter.safetensors"


def build_tiny_ip_adapter(path: str | os.PathLike, family: str, *, seed: int = 0) -> Path:
    """Save a tiny IP-Adapter for the tiny ``family`` pipeline: ``ip-adapter.safetensors`` and ``image_encoder/``.

    Returns the folder. Load it with ``--ip-adapter-model DIR --ip-adapter-weight ip-adapter.safetensors
    --image-encoder DIR/image_encoder``.
    """
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with _private_rng():
        tensors = _ip_adapter_state_dict(family, seed)
        encoder, processor = _tiny_image_encoder(family, seed)
    save_file(tensors, str(out / IP_ADAPTER_WEIGHT))
    with _quiet_bars():
        encoder.save_pretrained(out / "image_encoder")
        processor.save_pretrained(out / "image_encoder")
    return out
