"""--quantize: which components load quantized, and how, each through the libraries' own quantization configs given
to from_pretrained (diffusers' PipelineQuantizationConfig, holding diffusers' config for a diffusers model and
transformers' for a text encoder), or diffusers' GGUFQuantizationConfig for a GGUF transformer file.

The value is a comma-separated list of items:
  KIND             the denoiser (the largest component): int8, fp8, int4 or nf4
  COMPONENT=KIND   a named pipeline component, e.g. text_encoder_2=int8 (Flux's T5, 9.5 GB in bf16)
  gguf:FILE        the denoiser's weights from a GGUF file (city96's FLUX.1 / SD3.5 files), the rest from the model
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import UsageError
from .quiet import quiet_backends


@dataclass(frozen=True)
class Kind:
    """One quantization kind: its backend, the backend's name for it, and what it needs."""

    backend: str  # "torchao" or "bitsandbytes" (the package too)
    name: str  # torchao's config class, or bitsandbytes' 4-bit type
    cuda: bool  # its kernels run only on a CUDA GPU
    about: str


KINDS = {
    "int8": Kind("torchao", "Int8WeightOnlyConfig", False, "torchao int8 weight-only"),
    "fp8": Kind("torchao", "Float8WeightOnlyConfig", False, "torchao float8 (e4m3) weight-only"),
    # torchao's tinygemm int4 layout: the CUDA kernel diffusers' docs use (the CPU layouts need other packages)
    "int4": Kind("torchao", "Int4WeightOnlyConfig", True, "torchao int4 weight-only, groups of 128"),
    "nf4": Kind("bitsandbytes", "nf4", True, "bitsandbytes 4-bit NormalFloat"),
}
GGUF = "gguf:"


@dataclass(frozen=True)
class Item:
    component: str | None  # None: the family's denoiser
    kind: str  # a KINDS key, or "gguf"
    file: str | None = None  # the GGUF file

    def text(self) -> str:
        if self.kind == "gguf":
            return GGUF + str(self.file)
        return f"{self.component}={self.kind}" if self.component else self.kind


def parse_quantize(value) -> str:
    """The canonical spelling of a --quantize value ('none' or its items joined by commas); raises ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"must be a quantization name, got {value!r}")
    text = value.strip()
    if text.lower() in ("", "none"):
        return "none"
    parsed = [_item(part.strip()) for part in text.split(",")]
    names = [item.component for item in parsed]
    if len(set(names)) < len(names):
        raise ValueError(f"{value}: {'the denoiser' if names.count(None) > 1 else 'a component'} is quantized twice")
    return ",".join(item.text() for item in parsed)


def _item(part: str) -> Item:
    choices = f"choose none, {', '.join(KINDS)}, COMPONENT=KIND or gguf:FILE"
    if part.lower().startswith(GGUF):
        file = part[len(GGUF):]
        if not file:
            raise ValueError(f"{part}: name the GGUF file (gguf:FILE)")
        return Item(None, "gguf", os.path.abspath(os.path.expanduser(file)))  # replays from any folder
    component, _, kind = part.rpartition("=")
    kind = kind.lower()
    if kind not in KINDS:
        raise ValueError(f"unknown quantization {part!r}; {choices}")
    if component and not component.isidentifier():
        raise ValueError(f"{part}: {component!r} is not a pipeline component name (text_encoder_2=int8)")
    return Item(component or None, kind)


def items(spec: str) -> tuple[Item, ...]:
    """The parsed items of a canonical value ('none': none)."""
    return () if spec == "none" else tuple(_item(part) for part in spec.split(","))


def per_component(spec: str, denoiser: str) -> dict[str, Item]:
    """Component name -> its item (a bare kind and a GGUF file name the denoiser)."""
    out: dict[str, Item] = {}
    for item in items(spec):
        name = item.component or denoiser
        if name in out:
            raise UsageError(f"--quantize {spec}: {name} is quantized twice ({out[name].text()}, {item.text()})")
        out[name] = item
    return out


def map_files(spec: str, path) -> str:
    """The value with each GGUF file's path passed through `path` (a record's portable or replayed paths)."""
    return ",".join(GGUF + path(part[len(GGUF):]) if part.lower().startswith(GGUF) else part
                    for part in spec.split(","))


def gguf_file(spec: str) -> str | None:
    return next((item.file for item in items(spec) if item.kind == "gguf"), None)


def check(spec: str, family, components: tuple[str, ...], single_file: bool) -> None:
    """Refuse, before loading, a component the model has not, a backend not installed and a GGUF file that is not
    the family's transformer. `components`: the model's weight components (model_index.json; empty: unknown)."""
    import importlib.util

    for name, item in per_component(spec, family.denoiser).items():
        if components and name not in components:
            raise UsageError(f"--quantize {item.text()}: the model has no component {name!r}; its components: "
                             f"{', '.join(sorted(components))}")
        if item.kind == "gguf":
            _check_gguf(item.file, family, single_file)
            continue
        if single_file and name != family.denoiser:
            raise UsageError(f"--quantize {item.text()}: with a single-file --model only the denoiser loads "
                             f"quantized; leave {name} out")
        kind = KINDS[item.kind]
        if importlib.util.find_spec(kind.backend) is None:
            gpu = "a CUDA GPU and " if kind.cuda else ""
            raise UsageError(f"--quantize {item.text()}: {kind.about} needs {gpu}the {kind.backend} package (pip "
                             f"install {kind.backend})" + ("; on the CPU use int8 or fp8" if kind.cuda else ""))


def _check_gguf(file: str, family, single_file: bool) -> None:
    import importlib.util

    if single_file:
        raise UsageError(f"--quantize gguf:{file}: the GGUF file is the transformer; give the pipeline it belongs "
                         f"to with --preset or a --model folder or repo, not a single-file --model")
    if not family.gguf_architecture:
        raise UsageError(f"--quantize gguf:{file}: {family.label} transformers are not loaded from GGUF files")
    if not os.path.isfile(file):
        raise UsageError(f"--quantize gguf:{file}: no such file")
    if importlib.util.find_spec("gguf") is None:
        raise UsageError(f"--quantize gguf:{file}: needs the gguf package (pip install gguf)")
    architecture = gguf_architecture(file)
    if architecture != family.gguf_architecture:
        raise UsageError(f"--quantize gguf:{file}: a {architecture or 'unnamed'} GGUF file, not a "
                         f"{family.gguf_architecture} one (the {family.label} transformer)")


def gguf_architecture(file: str) -> str | None:
    """The file's general.architecture, read from its header (GGUFReader maps the file: no tensor is read)."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(file).get_field("general.architecture")
    except Exception as exc:  # not a GGUF file, or a truncated one
        raise UsageError(f"--quantize gguf:{file}: not a readable GGUF file ({exc})") from None
    return bytes(field.parts[field.data[0]]).decode() if field is not None else None


def check_device(spec: str, device: str, offload: str = "none") -> None:
    """nf4 and int4 run on CUDA kernels only, fp8 on GPUs of compute capability 8.9 (Ada, Hopper) and later;
    bitsandbytes' modules cannot be moved block by block or layer by layer."""
    for item in items(spec):
        kind = KINDS.get(item.kind)
        if kind is not None and kind.cuda and not device.startswith("cuda"):
            raise UsageError(f"--quantize {item.text()}: {kind.about} needs a CUDA GPU (its kernels run only there); "
                             f"on {device} use int8 or fp8")
        if item.kind == "fp8" and device.startswith("cuda"):
            import torch

            capability = torch.cuda.get_device_capability(device)
            if capability < (8, 9):
                raise UsageError(f"--quantize {item.text()}: float8 needs a GPU of compute capability 8.9 or later "
                                 f"(this one is {capability[0]}.{capability[1]}); use int8")
        if kind is not None and kind.backend == "bitsandbytes" and offload in ("group", "sequential"):
            raise UsageError(f"--quantize {item.text()} with --offload {offload}: bitsandbytes' layers cannot be "
                             f"moved one block or layer at a time; use --offload model")


def configs(spec: str, family, pipeline_class, dtype: str) -> dict:
    """Component -> the quantization config its library takes (diffusers' or transformers' class of the same name,
    told apart by the pipeline's constructor annotations), for every item but a GGUF file."""
    import inspect

    quiet_backends()
    hints = inspect.signature(pipeline_class.__init__).parameters
    out = {}
    for name, item in per_component(spec, family.denoiser).items():
        if item.kind == "gguf":
            continue
        annotation = hints[name].annotation if name in hints else None
        library = "transformers" if getattr(annotation, "__module__", "").startswith("transformers") else "diffusers"
        out[name] = _config(KINDS[item.kind], library, dtype)
    return out


def _config(kind: Kind, library: str, dtype: str):
    import importlib

    import torch

    module = importlib.import_module(library)
    if kind.backend == "bitsandbytes":
        return module.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind.name,
                                         bnb_4bit_compute_dtype=getattr(torch, dtype))
    import torchao.quantization

    options = {"group_size": 128, "int4_packing_format": "tile_packed_to_4d"} if kind.name.startswith("Int4") else {}
    return module.TorchAoConfig(getattr(torchao.quantization, kind.name)(**options))
