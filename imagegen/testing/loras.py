"""Tiny LoRAs and textual-inversion embeddings matched to the tiny pipelines, in the layouts people download: the
diffusers/peft one (`save_lora_weights`) and kohya sd-scripts / A1111's (`lora_unet_*`, `lora_te*_*`, `.alpha`).

Checked on diffusers 0.42.1 / peft 0.21.2 / transformers 5.24: a kohya file loads through `load_lora_weights` to the
same adapter weights as the diffusers file built with the same seed (alpha = rank: scale 1), so both give the same
pixels. diffusers converts no non-diffusers SD3 layout, so ``layout="kohya"`` raises for sd3. Its kohya Flux converter
hardcodes FLUX.1's widths for the fused single-block ``linear1`` (q, k, v, mlp), and it names the modules outside
the blocks (final_layer, img_in, txt_in, time_in, ...) without the ``transformer.`` prefix, so load_lora_weights drops
them: the tiny Flux LoRA adapts the double blocks and the single blocks' ``linear2`` (``proj_out``) only, in both
layouts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..families import FAMILIES
from .parts import _private_rng
from .pipelines import TINY

LORA_LAYOUTS = ("diffusers", "kohya")
KOHYA_FAMILIES = ("sd15", "sdxl", "flux")  # the families whose kohya LoRAs diffusers 0.42 converts
EMBEDDING_LAYOUTS = ("a1111", "diffusers")

# The modules a tiny LoRA adapts (a peft target_modules regex, matched against whole module names), by class.
_NET = r"\.net\.(0\.proj|2)"  # a FeedForward's two linears
_JOINT = rf"transformer_blocks\.\d+\.(attn\.(to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)|ff{_NET}|ff_context{_NET})"
_UNET = rf".*attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_[qkv]|to_out\.0)|ff{_NET}))"
_TARGETS = {
    "UNet2DConditionModel": _UNET,
    "SD3Transformer2DModel": _JOINT,
    "FluxTransformer2DModel": _JOINT + r"|single_transformer_blocks\.\d+\.proj_out",
    "text": r".*self_attn\.(q|k|v|out)_proj",  # CLIP text encoders: the attention projections
}

# kohya's prefix for each text encoder, by family (sd-scripts names Flux's CLIP-L lora_te1_, as for SDXL).
_KOHYA_TE = {"sd15": {"text_encoder": "lora_te_"},
             "sdxl": {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
             "flux": {"text_encoder": "lora_te1_"}}

# Flux double-block modules -> BFL names (kohya_flux: lora_unet_double_blocks_<i>_<name>); q, k, v are fused.
_FLUX_DOUBLE = {"attn.to_out.0": "img_attn_proj", "attn.to_add_out": "txt_attn_proj", "ff.net.0.proj": "img_mlp_0",
                "ff.net.2": "img_mlp_2", "ff_context.net.0.proj": "txt_mlp_0", "ff_context.net.2": "txt_mlp_2"}
_FLUX_QKV = {"img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
             "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}

_LORA_B_STD = 1.0  # lora_B's scale (peft starts it at zero): enough to change a tiny image plainly
_EMBEDDING_STD = 1.0  # the tiny CLIPs' own token embeddings are N(0, 0.02)


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(allowed)}")


def _lora_weights(pipe: Any, family: str, seed: int, text_encoder: bool, rank: int) -> dict[str, dict]:
    """Per component (unet/transformer, text_encoder[_2]): {module name: (lora_A, lora_B)} from peft-injected LoRAs."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    denoiser = FAMILIES[family].denoiser
    names = [denoiser] + ([m for m in type(pipe)._lora_loadable_modules if m != denoiser] if text_encoder else [])
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, dict] = {}
    for name in names:
        model = getattr(pipe, name)
        target = _TARGETS[type(model).__name__ if name == denoiser else "text"]
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=target, init_lora_weights=True)
        inject_adapter_in_model(config, model)
        state = get_peft_model_state_dict(model)
        pairs = {}
        for key in sorted(k for k in state if ".lora_A." in k):
            module = key.split(".lora_A.")[0]
            a, b = state[key], state[key.replace(".lora_A.", ".lora_B.")]
            a = torch.randn(a.shape, generator=generator) / a[0].numel() ** 0.5
            b = torch.randn(b.shape, generator=generator) * _LORA_B_STD / rank ** 0.5
            if name != denoiser and not module.startswith("text_model."):
                module = "text_model." + module  # as LoRA files name CLIPTextModel's layers (transformers 4 layout)
            pairs[module] = (a.contiguous(), b.contiguous())
        out[name] = pairs
    return out


def _sgm_name(module: str, layers_per_block: int) -> str:
    """A diffusers UNet attention module's name in SDXL's original (sgm) UNet, as sd-scripts writes SDXL LoRAs."""
    parts = module.split(".")
    if parts[0] == "mid_block":
        return ".".join(["middle_block", "1"] + parts[3:])
    block, layer = int(parts[1]), int(parts[3])
    inner = {"resnets": "0", "attentions": "1"}[parts[2]]
    if parts[0] == "down_blocks":
        return ".".join(["input_blocks", str(1 + block * (layers_per_block + 1) + layer), inner] + parts[4:])
    return ".".join(["output_blocks", str(block * (layers_per_block + 1) + layer), inner] + parts[4:])


def _kohya_pair(out: dict, name: str, down: Any, up: Any) -> None:
    import torch

    out[f"{name}.lora_down.weight"] = down.contiguous()
    out[f"{name}.lora_up.weight"] = up.contiguous()
    out[f"{name}.alpha"] = torch.tensor(float(down.shape[0]))  # alpha = rank: scale 1, as the diffusers file


def _kohya_flux(pairs: dict, out: dict) -> None:
    """Flux transformer LoRAs under kohya's BFL names; q/k/v go in one fused qkv LoRA (block-diagonal lora_up)."""
    import torch

    for module, (a, b) in pairs.items():
        parts = module.split(".")
        if parts[0] == "single_transformer_blocks":
            _kohya_pair(out, f"lora_unet_single_blocks_{parts[1]}_linear2", a, b)
        elif ".".join(parts[2:]) in _FLUX_DOUBLE:
            _kohya_pair(out, f"lora_unet_double_blocks_{parts[1]}_{_FLUX_DOUBLE['.'.join(parts[2:])]}", a, b)
    blocks = sorted({m.split(".")[1] for m in pairs if m.startswith("transformer_blocks.")}, key=int)
    for i in blocks:
        for fused, members in _FLUX_QKV.items():
            a_b = [pairs[f"transformer_blocks.{i}.{m}"] for m in members]
            down = torch.cat([a for a, _ in a_b])
            _kohya_pair(out, f"lora_unet_double_blocks_{i}_{fused}", down, torch.block_diag(*[b for _, b in a_b]))


_KOHYA_UNET_NAMES = {"sd15": "diffusers", "sdxl": "sgm"}


def _kohya_state_dict(weights: dict[str, dict], family: str, pipe: Any) -> dict[str, Any]:
    """The LoRA as kohya sd-scripts saves it: lora_unet_* / lora_te*_* with lora_down, lora_up and alpha."""
    out: dict[str, Any] = {}
    for component, pairs in weights.items():
        if component == "transformer":
            _kohya_flux(pairs, out)
            continue
        for module, (a, b) in pairs.items():
            if component == "unet":
                sgm = _KOHYA_UNET_NAMES[family] == "sgm"  # sd-scripts names SDXL's UNet blocks as SGM does
                name = _sgm_name(module, pipe.unet.config.layers_per_block) if sgm else module
                _kohya_pair(out, "lora_unet_" + name.replace(".", "_"), a, b)
            else:
                _kohya_pair(out, _KOHYA_TE[family][component] + module.replace(".", "_"), a, b)
    return out


def build_tiny_lora(path: str | os.PathLike, family: str, *, layout: str = "diffusers", seed: int = 0,
                    text_encoder: bool = True, rank: int = 4) -> Path:
    """Write one tiny LoRA .safetensors for the tiny ``family`` pipeline at ``path`` (a file); returns the path."""
    from safetensors.torch import save_file

    _check(layout, LORA_LAYOUTS, "LoRA layout")
    if family not in TINY:
        raise ValueError(f"no tiny pipeline for family {family!r}; known: {', '.join(TINY)}")
    if layout == "kohya" and family not in KOHYA_FAMILIES:
        raise ValueError(f"diffusers converts no kohya (non-diffusers) LoRA layout for {family}; use 'diffusers'")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _private_rng():
        pipe = TINY[family](0)  # only the architecture matters: the LoRA fits a tiny pipeline of any seed
        weights = _lora_weights(pipe, family, seed, text_encoder, rank)
    if layout == "kohya":
        save_file(_kohya_state_dict(weights, family, pipe), str(out))
        return out
    layers = {f"{component}_lora_layers": {f"{m}.lora_{ab}.weight": t for m, pair in pairs.items()
                                           for ab, t in zip("AB", pair)}
              for component, pairs in weights.items()}
    type(pipe).save_lora_weights(out.parent, weight_name=out.name, safe_serialization=True, **layers)
    return out


def build_tiny_embedding(path: str | os.PathLike, family: str, *, layout: str = "a1111", vectors: int = 2,
                         seed: int = 0, token: str = "<tiny-embedding>") -> Path:
    """Write a tiny textual-inversion .safetensors for the tiny sd15 or sdxl pipeline at ``path``; returns the path."""
    import torch
    from safetensors.torch import save_file

    _check(layout, EMBEDDING_LAYOUTS, "embedding layout")
    keys = {"sd15": {"emb_params": "text_encoder"}, "sdxl": {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}}
    if family not in keys:
        raise ValueError(f"tiny textual-inversion embeddings are for sd15 and sdxl, not {family!r}")
    if layout == "diffusers" and len(keys[family]) > 1:
        raise ValueError("diffusers' SDXL textual-inversion script writes one file per text encoder; "
                         "use layout='a1111' (clip_l / clip_g in one file)")
    with _private_rng():
        pipe = TINY[family](0)
    generator = torch.Generator().manual_seed(seed)
    tensors = {key: torch.randn(vectors, getattr(pipe, encoder).config.hidden_size, generator=generator)
               * _EMBEDDING_STD for key, encoder in keys[family].items()}
    if layout == "diffusers":
        tensors = {token: tensors["emb_params"]}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out))
    return out
