"""Checkpoints in the original single-file layouts (LDM/A1111, SGM, SD3, BFL, ComfyUI), written from diffusers
pipelines (the inverse of diffusers' single_file_utils converters, so `from_single_file` loads them back), header-only
sparse safetensors files, and the original key shapes of real-size configs built on the meta device.

Layouts per pipeline class; the denoiser is under `model.diffusion_model.` unless `prefix` says otherwise:
  StableDiffusion:   `first_stage_model.` VAE; `cond_stage_model.transformer.text_model.` CLIP (SD 1.x), or with
                     text_layout="openclip" `cond_stage_model.model.` OpenCLIP (SD 2.x)
  StableDiffusionXL: `first_stage_model.`, `conditioner.embedders.0.transformer.text_model.` CLIP-L,
                     `conditioner.embedders.1.model.` OpenCLIP bigG (`embedders.0.model.` in a refiner)
  StableDiffusion3:  MMDiT joint_blocks, `first_stage_model.`, `text_encoders.{clip_l,clip_g}.transformer.text_model.`,
                     `text_encoders.t5xxl.transformer.` (HF T5 keys)
  Flux:              BFL keys, unprefixed when alone (BFL's release files), else ComfyUI's all-in-one:
                     `model.diffusion_model.`, `vae.`, `text_encoders.{clip_l,t5xxl}.transformer.`
A VAE-only file has no prefix (as sdxl_vae.safetensors / ae.safetensors).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

UNET_PREFIX = "model.diffusion_model."

# safetensors dtype names -> bytes per element
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
               "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}

# text encoder component -> (key prefix, converter name), per layout
_TEXT: dict[str, dict[str, tuple[str, str]]] = {
    "ldm": {"text_encoder": ("cond_stage_model.transformer.", "clip")},
    "ldm-openclip": {"text_encoder": ("cond_stage_model.model.", "openclip")},
    "ldm-xl": {"text_encoder": ("conditioner.embedders.0.transformer.", "clip"),
             "text_encoder_2": ("conditioner.embedders.1.model.", "openclip")},
    "ldm-xl-refiner": {"text_encoder_2": ("conditioner.embedders.0.model.", "openclip")},
    "mmdit": {"text_encoder": ("text_encoders.clip_l.transformer.", "clip"),
            "text_encoder_2": ("text_encoders.clip_g.transformer.", "clip"),
            "text_encoder_3": ("text_encoders.t5xxl.transformer.", "t5")},
    "bfl": {"text_encoder": ("text_encoders.clip_l.transformer.", "clip"),
             "text_encoder_2": ("text_encoders.t5xxl.transformer.", "t5")},
}


def original_state_dict(pipe_or_folder: Any, *, parts: Iterable[str] | None = None, prefix: str | None = None,
                        text_layout: str = "clip") -> dict[str, Any]:
    """The pipeline's weights (a pipeline or a saved folder) in its family's original single-file layout."""
    import torch
    from diffusers import DiffusionPipeline

    if isinstance(pipe_or_folder, (str, os.PathLike)):
        pipe_or_folder = DiffusionPipeline.from_pretrained(pipe_or_folder, local_files_only=True)

    modules = {n: c for n, c in pipe_or_folder.components.items() if isinstance(c, torch.nn.Module)}
    return _convert(type(pipe_or_folder).__name__, modules, parts, prefix, text_layout)


def write_checkpoint(folder: str | os.PathLike, path: str | os.PathLike, *, parts: Iterable[str] | None = None,
                     prefix: str | None = None, text_layout: str = "clip", dtype: Any = None,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write the saved pipeline in ``folder`` as one original-layout safetensors file; returns its path."""
    import torch
    from safetensors.torch import save_file

    state = original_state_dict(folder, parts=parts, prefix=prefix, text_layout=text_layout)
    cast = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    tensors = {k: (v.to(cast) if cast is not None and v.is_floating_point() else v).contiguous()
               for k, v in state.items()}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=metadata)
    return out


def write_header_only(path: str | os.PathLike, shapes: dict[str, tuple[str, tuple[int, ...]]],
                      metadata: dict[str, str] | None = None) -> Path:
    """A valid safetensors file of ``shapes`` (name -> (dtype, shape)) whose data area is sparse, never written."""
    header: dict[str, Any] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    offset = 0
    for name, (dtype, shape) in shapes.items():
        size = DTYPE_BYTES[dtype] * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads its header so that the data area starts 8-byte aligned
    out = Path(path)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)  # extending by truncate writes no blocks: the data area is a hole
    return out


def meta_original_shapes(config_folder: str | os.PathLike, *, parts: Iterable[str] | None = None,
                         prefix: str | None = None, text_layout: str = "clip",
                         dtype: str | None = None) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Original-layout names -> (safetensors dtype, shape) of a diffusers config folder, built on the meta device."""
    class_name, modules = _meta_modules(config_folder)
    state = _convert(class_name, modules, parts, prefix, text_layout)
    return {k: (dtype or _st_dtype(v.dtype), tuple(v.shape)) for k, v in state.items()}


def _meta_modules(folder: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """The pipeline class name and all its model components (the layout depends on which exist), on meta."""
    import importlib

    import torch

    index = json.loads((Path(folder) / "model_index.json").read_text())
    modules = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] not in ("diffusers", "transformers"):
            continue
        cls = getattr(importlib.import_module(spec[0]), spec[1])
        if not issubclass(cls, torch.nn.Module):
            continue  # tokenizers, schedulers
        with torch.device("meta"):
            if spec[0] == "diffusers":
                modules[name] = cls.from_config(cls.load_config(folder, subfolder=name))
            else:
                modules[name] = cls(cls.config_class.from_pretrained(Path(folder) / name))
    return index["_class_name"], modules


def _st_dtype(dtype: Any) -> str:
    """The safetensors name of a torch dtype."""
    names = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3",
             "float8_e5m2": "F8_E5M2", "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
             "bool": "BOOL"}
    return names[str(dtype).removeprefix("torch.")]


def _layout(class_name: str) -> str:
    """The original layout of a pipeline class (its img2img / inpaint siblings share the layout)."""
    for start, layout in (("StableDiffusionXL", "ldm-xl"), ("StableDiffusion3", "mmdit"), ("Flux", "bfl"),
                          ("StableDiffusion", "ldm")):
        if class_name.startswith(start):
            return layout
    raise ValueError(f"no original single-file layout known for {class_name}")


def _convert(class_name: str, modules: dict[str, Any], parts: Iterable[str] | None, prefix: str | None,
             text_layout: str) -> dict[str, Any]:
    """Every requested component's state dict, converted and prefixed as its layout's single file has it."""
    layout = _layout(class_name)
    if text_layout not in ("clip", "openclip") or (text_layout == "openclip" and layout != "ldm"):
        raise ValueError(f"text_layout {text_layout!r} does not apply to {class_name}")
    text = "ldm-openclip" if text_layout == "openclip" else layout
    if layout == "ldm-xl" and "text_encoder" not in modules:
        text = "ldm-xl-refiner"  # the refiner has only bigG, stored as embedders.0
    parts = tuple(parts) if parts else tuple(modules)
    if missing := [p for p in parts if p not in modules]:
        raise KeyError(f"{class_name} has no component {missing}")
    if prefix is None:
        prefix = "" if layout == "bfl" and parts == ("transformer",) else UNET_PREFIX
    out: dict[str, Any] = {}
    for name in parts:
        module = modules[name]
        if name in ("unet", "transformer"):
            key_prefix, convert = prefix, _DENOISERS[layout]
        elif name == "vae":
            key_prefix = "" if parts == ("vae",) else "vae." if layout == "bfl" else "first_stage_model."
            convert = _vae
        else:
            key_prefix, kind = _TEXT[text][name]
            convert = _TEXT_CONVERTERS[kind]
        out.update((key_prefix + k, v) for k, v in convert(_state(module), module.config).items())
    return out


def _state(module: Any) -> dict[str, Any]:
    """The module's state dict without tied duplicates (T5's embed_tokens): safetensors stores a tensor once."""
    tied = ({n for n, _ in module.named_parameters(remove_duplicate=False)}
            - {n for n, _ in module.named_parameters()})
    return {k: v for k, v in module.state_dict().items() if k not in tied}


def _rename(sd: dict[str, Any], src: str, dst: str, table: dict[str, str],
            leaves: tuple[str, ...] = ("weight", "bias")) -> dict[str, Any]:
    """The ``src + stem + leaf`` tensors that exist, renamed ``dst + table[stem] + leaf``."""
    out = {}
    for stem, new in table.items():
        for leaf in leaves:
            key = f"{src}{stem}.{leaf}" if leaf else f"{src}{stem}"
            if key in sd:
                out[f"{dst}{new}.{leaf}" if leaf else f"{dst}{new}"] = sd[key]
    return out


def _fuse(sd: dict[str, Any], src: str, dst: str, table: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """Original fused projections (qkv, linear1): the listed diffusers tensors concatenated on dim 0."""
    import torch

    out = {}
    for new, stems in table.items():
        for leaf in ("weight", "bias"):
            if f"{src}{stems[0]}.{leaf}" in sd:
                out[f"{dst}{new}.{leaf}"] = torch.cat([sd[f"{src}{s}.{leaf}"] for s in stems])
    return out


def _swap(weight: Any) -> Any:
    """Swap the two halves: the originals' adaLN order is (shift, scale), diffusers' is (scale, shift)."""
    import torch

    return torch.cat(weight.chunk(2, dim=0)[::-1], dim=0)


# ---- UNet (openaimodel layout), generalised from the config: any block count and layers_per_block ----
_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "class_embedding.linear_1": "label_emb.0.0", "class_embedding.linear_2": "label_emb.0.2"}


def _unet_prefixes(config: Any) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, LDM prefix, is a resnet) for every block of the UNet described by ``config``."""
    n, per = len(config["block_out_channels"]), config["layers_per_block"]
    if not isinstance(per, int):
        raise ValueError("the LDM layout needs one layers_per_block for every block")
    out = [("mid_block.resnets.0.", "middle_block.0.", True), ("mid_block.attentions.0.", "middle_block.1.", False),
           ("mid_block.resnets.1.", "middle_block.2.", True)]
    for i in range(n):
        for j in range(per):  # input_blocks: conv_in, then per resnet(+attention) of each block, then its downsampler
            k = 1 + i * (per + 1) + j
            out += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{k}.0.", True),
                    (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{k}.1.", False)]
        out.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (per + 1)}.0.op.", False))
        for j in range(per + 1):  # output_blocks: per + 1 resnets a block, the upsampler after the last one's attention
            k = i * (per + 1) + j
            out += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{k}.0.", True),
                    (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{k}.1.", False)]
        slot = 2 if "CrossAttn" in config["up_block_types"][i] else 1
        out.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * (per + 1) + per}.{slot}.", False))
    return out


def _unet(sd: dict[str, Any], config: Any) -> dict[str, Any]:
    """A UNet2DConditionModel state dict in the LDM (openaimodel) layout, without prefix."""
    prefixes = _unet_prefixes(config)
    out = {}
    for key, value in sd.items():
        stem, _, leaf = key.rpartition(".")
        if stem in _UNET_TOP:
            out[f"{_UNET_TOP[stem]}.{leaf}"] = value
            continue
        for hf, ldm, resnet in prefixes:
            if key.startswith(hf):
                rest = key[len(hf):]
                for a, b in _RESNET if resnet else ():
                    rest = rest.replace(a, b)
                out[ldm + rest] = value  # attention blocks (SpatialTransformer) keep diffusers' inner names
                break
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
    return out


def _vae(sd: dict[str, Any], config: Any) -> dict[str, Any]:
    """An AutoencoderKL state dict in the LDM autoencoder layout, without prefix."""
    n = len(config["block_out_channels"])
    rules = [("conv_shortcut", "nin_shortcut"), ("conv_norm_out", "norm_out"),
             ("mid_block.attentions.0.", "mid.attn_1."), ("mid_block.resnets.0.", "mid.block_1."),
             ("mid_block.resnets.1.", "mid.block_2.")]
    for i in range(n):  # the decoder's up blocks are numbered from the bottom in LDM
        rules += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."),
                  (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block."),
                  (f"down_blocks.{i}.downsamplers.0.", f"down.{i}.downsample."),
                  (f"up_blocks.{i}.upsamplers.0.", f"up.{n - 1 - i}.upsample.")]
    attention = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                 ("to_out.0.", "proj_out."))
    out = {}
    for key, value in sd.items():
        new = key
        for hf, ldm in rules:
            new = new.replace(hf, ldm)
        if ".mid.attn_1." in new:
            for hf, ldm in attention:
                new = new.replace(hf, ldm)
            if new.endswith(".weight") and value.ndim == 2:
                value = value[:, :, None, None]  # LDM's mid attention projections are 1x1 convolutions
        out[new] = value
    return out


# ---- text encoders ----
def _clip(sd: dict[str, Any], config: Any) -> dict[str, Any]:
    """HF CLIP keys as the originals store them: transformers >= 5.6 drops CLIPTextModel's `text_model.` level."""
    return {k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v for k, v in sd.items()}


_OPENCLIP = (("text_model.encoder.layers.", "transformer.resblocks."), ("layer_norm1", "ln_1"),
             ("layer_norm2", "ln_2"), (".fc1.", ".c_fc."), (".fc2.", ".c_proj."), (".self_attn.", ".attn."),
             ("text_model.final_layer_norm.", "ln_final."),
             ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
             ("text_model.embeddings.position_embedding.weight", "positional_embedding"))


def _openclip(sd: dict[str, Any], config: Any) -> dict[str, Any]:
    """HF CLIP weights in the OpenCLIP layout: q/k/v fused into in_proj, text_projection transposed."""
    import torch

    hf = _clip(sd, config)
    out = {}
    for key, value in hf.items():
        if key == "text_projection.weight":
            out["text_projection"] = value.T  # OpenCLIP computes x @ proj, a Linear x @ W.T
            continue
        qkv = re.fullmatch(r"(.+)\.self_attn\.([qkv])_proj\.(weight|bias)", key)
        if qkv and qkv[2] != "q":
            continue  # fused into in_proj with q
        if qkv:
            value = torch.cat([hf[f"{qkv[1]}.self_attn.{p}_proj.{qkv[3]}"] for p in "qkv"])
            key = f"{qkv[1]}.self_attn.in_proj_{qkv[3]}"
        for name, oc_name in _OPENCLIP:
            key = key.replace(name, oc_name)
        out[key] = value
    return out


_TEXT_CONVERTERS: dict[str, Callable[[dict[str, Any], Any], dict[str, Any]]] = {
    "clip": _clip, "openclip": _openclip, "t5": lambda sd, config: dict(sd)}  # T5 originals keep the HF keys


# ---- SD3 MMDiT ----
_SD3_TOP = {"pos_embed.proj": "x_embedder.proj", "context_embedder": "context_embedder",
            "proj_out": "final_layer.linear",
            **{f"time_text_embed.{hf}_embedder.linear_{j}": f"{og}_embedder.mlp.{2 * j - 2}"
               for hf, og in (("timestep", "t"), ("text", "y")) for j in (1, 2)}}
_SD3_BLOCK = {"attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
              "attn2.to_out.0": "x_block.attn2.proj", "norm1.linear": "x_block.adaLN_modulation.1",
              "norm1_context.linear": "context_block.adaLN_modulation.1",
              "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2",
              "ff_context.net.0.proj": "context_block.mlp.fc1", "ff_context.net.2": "context_block.mlp.fc2",
              "attn.norm_q": "x_block.attn.ln_q", "attn.norm_k": "x_block.attn.ln_k",
              "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
              "attn2.norm_q": "x_block.attn2.ln_q", "attn2.norm_k": "x_block.attn2.ln_k"}
_SD3_QKV = {"x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
            "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
            "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v")}


def _sd3(sd: dict[str, Any], config: Any) -> dict[str, Any]:
    """An SD3Transformer2DModel state dict in the SD3 reference (MMDiT) layout, without prefix."""
    out = {"pos_embed": sd["pos_embed.pos_embed"], **_rename(sd, "", "", _SD3_TOP),
           "final_layer.adaLN_modulation.1.weight": _swap(sd["norm_out.linear.weight"]),
           "final_layer.adaLN_modulation.1.bias": _swap(sd["norm_out.linear.bias"])}
    n = config["num_layers"]
    for i in range(n):
        src, dst = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        out |= _rename(sd, src, dst, _SD3_BLOCK) | _fuse(sd, src, dst, _SD3_QKV)
    for leaf in ("weight", "bias"):  # the last block's context modulation is a final-layer style (shift, scale)
        key = f"joint_blocks.{n - 1}.context_block.adaLN_modulation.1.{leaf}"
        out[key] = _swap(out[key])
    return out


# ---- Flux (BFL layout) ----
_FLUX_TOP = {"context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear",
             **{f"time_text_embed.{hf}_embedder.linear_{j}": f"{bfl}_in.{layer}"
                for hf, bfl in (("timestep", "time"), ("text", "vector"), ("guidance", "guidance"))
                for j, layer in ((1, "in_layer"), (2, "out_layer"))}}
_FLUX_DOUBLE = {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
                "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
                "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
                "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2"}
_FLUX_DOUBLE_NORMS = {f"attn.norm_{hf}.weight": f"{s}_attn.norm.{bfl}_norm.scale"
                      for hf, s, bfl in (("q", "img", "query"), ("k", "img", "key"),
                                         ("added_q", "txt", "query"), ("added_k", "txt", "key"))}
_FLUX_DOUBLE_QKV = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_FLUX_SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
_FLUX_SINGLE_NORMS = {"attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale"}
_FLUX_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}


def _flux(sd: dict[str, Any], config: Any) -> dict[str, Any]:
    """A FluxTransformer2DModel state dict in the BFL layout, without prefix."""
    out = {**_rename(sd, "", "", _FLUX_TOP),
           "final_layer.adaLN_modulation.1.weight": _swap(sd["norm_out.linear.weight"]),
           "final_layer.adaLN_modulation.1.bias": _swap(sd["norm_out.linear.bias"])}
    for i in range(config["num_layers"]):
        src, dst = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        out |= (_rename(sd, src, dst, _FLUX_DOUBLE) | _rename(sd, src, dst, _FLUX_DOUBLE_NORMS, ("",))
                | _fuse(sd, src, dst, _FLUX_DOUBLE_QKV))
    for i in range(config["num_single_layers"]):
        src, dst = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        out |= (_rename(sd, src, dst, _FLUX_SINGLE) | _rename(sd, src, dst, _FLUX_SINGLE_NORMS, ("",))
                | _fuse(sd, src, dst, _FLUX_SINGLE_FUSED))
    return out


_DENOISERS: dict[str, Callable[[dict[str, Any], Any], dict[str, Any]]] = {
    "ldm": _unet, "ldm-xl": _unet, "mmdit": _sd3, "bfl": _flux}
