"""GGUF-quantized denoisers of tiny pipelines, laid out as city96's published FLUX.1 / SD3.5 GGUF files, so
`FluxTransformer2DModel.from_single_file(path, quantization_config=GGUFQuantizationConfig(...), config=folder,
subfolder="transformer")` loads them back through diffusers' own reader (`load_gguf_checkpoint`, which makes every
tensor that is not F32/F16 a GGUFParameter, and GGUFLinear of each nn.Linear whose weight is one).

The file holds the transformer alone in its original layout (BFL keys for Flux, SAI MMDiT keys for SD3), unprefixed
(city96 strips `model.diffusion_model.`), with `general.architecture` "flux" / "sd3", `general.quantization_version`
and `general.file_type`. city96 makes them in two steps, whose rules are reproduced per tensor: ComfyUI-GGUF's
tools/convert.py writes 1-D tensors and those of at most 1024 elements as F32 and the rest as F16 (from a float32
source); then llama.cpp's llama-quantize, with city96's lcpp patches, quantizes only 2-D tensors whose name ends in
"weight", never the input embedders, the final layer or SD3's pos_embed (`_KEEP`), falling back to F16 where a row
does not split into the quant's blocks. ``qtype`` is any type gguf-py quantizes in numpy (Q8_0, Q5_0, Q5_1, Q4_0,
Q4_1, BF16, F16); the K-quants of the published files need llama.cpp. Checked with gguf 0.19.0, diffusers 0.42.1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .checkpoints import original_state_dict

# city96's QUANTIZATION_THRESHOLD: tensors with at most this many elements are kept in F32
QUANTIZATION_THRESHOLD = 1024

# name substrings llama-quantize leaves unquantized, per architecture (city96's lcpp.patch / lcpp_sd3.patch)
_KEEP = {
    "flux": ("txt_in.", "img_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer."),
    "sd3": ("final_layer.", "time_text_embed.", "context_embedder.", "t_embedder.", "y_embedder.", "x_embedder.",
            "proj_out.weight", "pos_embed"),
}


def gguf_architecture(folder: str | os.PathLike) -> str:
    """The GGUF architecture name of the diffusers pipeline saved in ``folder`` ("flux" or "sd3")."""
    from ..families import family_of_pipeline

    class_name = json.loads((Path(folder) / "model_index.json").read_text())["_class_name"]
    family = family_of_pipeline(class_name)
    if family is None or not family.gguf_architecture:
        raise ValueError(f"no GGUF architecture known for {class_name}")
    return family.gguf_architecture


def write_gguf(folder: str | os.PathLike, path: str | os.PathLike, *, qtype: str = "Q8_0") -> Path:
    """Write the transformer of the pipeline saved in ``folder`` as a city96-style GGUF file; returns its path."""
    import gguf

    arch = gguf_architecture(folder)
    quant = _quant_type(qtype)
    state = original_state_dict(folder, parts=["transformer"], prefix="")

    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    file_type = getattr(gguf.LlamaFileType, f"MOSTLY_{quant.name}", None)
    if file_type is not None:
        writer.add_file_type(file_type)
    for key, tensor in state.items():
        if tensor.dim() == 0:
            continue  # GGUF cannot store scalars; city96 skips them
        quantize = tensor.dim() == 2 and key.endswith("weight") and not any(k in key for k in _KEEP[arch])
        data, data_type = _encode(tensor, quant if quantize else None)
        writer.add_tensor(key, data, raw_dtype=data_type)

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file(path=out)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _quant_type(qtype: str) -> Any:
    """The GGMLQuantizationType named ``qtype``, if gguf-py can quantize to it in numpy."""
    import gguf
    import numpy as np

    try:
        quant = gguf.GGMLQuantizationType[qtype.upper()]
    except KeyError:
        raise ValueError(f"unknown GGUF quantization type {qtype!r}") from None
    try:
        gguf.quants.quantize(np.zeros((1, 256), dtype=np.float32), quant)  # 256: every block size divides it
    except NotImplementedError:
        raise ValueError(f"gguf-py cannot quantize to {quant.name} in numpy (K- and I-quants need llama.cpp's "
                         "llama-quantize)") from None
    return quant


def _encode(tensor: Any, quant: Any) -> tuple[Any, Any]:
    """The tensor's GGUF data (a numpy array, as gguf.quants.quantize returns it) and type: ``quant``, or with None
    what city96's convert.py writes for a float32 source (F32 if 1-D or small, else F16)."""
    import gguf
    import torch

    data = tensor.detach().to(torch.float32).cpu().numpy()
    target = quant
    if quant is None:
        small = data.ndim == 1 or data.size <= QUANTIZATION_THRESHOLD
        target = gguf.GGMLQuantizationType.F32 if small else gguf.GGMLQuantizationType.F16
    try:
        return gguf.quants.quantize(data, target), target
    except gguf.QuantError:  # the last dimension is not a multiple of the block size
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.F16), gguf.GGMLQuantizationType.F16
