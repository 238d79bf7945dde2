"""IP-Adapter: where the adapter and its image encoder are chosen, checked (safetensors only), loaded into the
pipeline's denoiser for the requests that use it, and unloaded for those that do not."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RunError, UsageError, closest
from ..fields import Field, name, names, number
from ..hub import canonical_weights, load_error, resolved_revision, split_revision
from ..inputs import InputImage, check_image, load_rgb
from .base import Adapter, ResolveContext, pinned

DEFAULT_SCALE = 1.0
WEIGHT = "ip-adapter.safetensors"  # the file name when neither the preset nor --ip-adapter-weight names one
TABLE_KEYS = {"model", "subfolder", "weight", "image_encoder", "image_encoder_subfolder", "scale"}

FIELDS = (
    Field("ip_adapter", names, (str, list), "Image prompt: style or subject from a reference image (repeat for "
          "several; SD3 takes one). Flux turns on true CFG for it.", path="image", metavar="IMAGE", repeat=True),
    Field("ip_scale", number(0.0, 5.0), (int, float), "IP-Adapter strength (default: the preset's, else 1).",
          metavar="FLOAT"),
    Field("ip_adapter_model", name, (str,), "IP-Adapter repo id (repo@revision) or local folder. Default: the "
          "preset's.", path="weights", metavar="REPO|DIR"),
    Field("ip_adapter_subfolder", name, (str,), "Subfolder of the adapter file in that repo or folder."),
    Field("ip_adapter_weight", name, (str,), "The adapter's .safetensors file name (pickle .bin files are refused).",
          metavar="FILE"),
    Field("image_encoder", name, (str,), "The adapter's image encoder (CLIP vision for SDXL and Flux, SigLIP for "
          "SD3). Default: the preset's, or DIR/image_encoder beside a local adapter.", path="weights",
          metavar="REPO|DIR"),
    Field("image_encoder_subfolder", name, (str,), "Subfolder of the image encoder in its repo or folder."),
)


@dataclass(frozen=True)
class IPAdapterSpec:
    """The image prompt of a request: reference images, the adapter and encoder that read them, and its strength."""

    images: tuple[InputImage, ...]
    scale: float
    model: str  # hub repo id or absolute folder
    revision: str | None
    subfolder: str | None
    weight: str
    image_encoder: str
    image_encoder_revision: str | None
    image_encoder_subfolder: str | None
    record: dict = field(default_factory=dict, compare=False, hash=False)

    def weights_key(self) -> tuple:
        """What must be loaded into the pipeline (the scale is set per call)."""
        return (self.model, self.revision, self.subfolder, self.weight, self.image_encoder,
                self.image_encoder_revision, self.image_encoder_subfolder)


def _refuse_pickle(weight: str, where: str) -> None:
    if not weight.endswith(".safetensors"):
        raise UsageError(
            f"{where}: {weight!r} is not a .safetensors file; pickle weights (.bin, .pt, .pth, .ckpt) can run "
            f"arbitrary code when loaded, so imagegen loads safetensors adapters only (convert it with the "
            f"`safetensors` library, or use a safetensors copy)"
        )


def _local_weight(folder: Path, subfolder: str | None, weight: str | None) -> str:
    """The adapter file in a local folder: as named, else its one .safetensors file; pickle-only folders refused."""
    where = folder / subfolder if subfolder else folder
    if not where.is_dir():
        raise UsageError(f"--ip-adapter-subfolder {subfolder}: no such folder in {folder}")
    if weight:
        if not (where / weight).is_file():
            raise UsageError(f"--ip-adapter-weight {weight}: no such file in {where}")
        _refuse_pickle(weight, f"--ip-adapter-weight {weight}")
        return weight
    safe = sorted(p.name for p in where.glob("*.safetensors"))
    if len(safe) == 1:
        return safe[0]
    if safe:
        raise UsageError(f"--ip-adapter-model {folder}: holds {', '.join(safe)}; name one with --ip-adapter-weight")
    pickles = sorted(p.name for p in where.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        _refuse_pickle(pickles[0], f"--ip-adapter-model {folder}")
    raise UsageError(f"--ip-adapter-model {folder}: no .safetensors adapter in {where}")


def _check_encoder_folder(folder: Path, flag: str) -> None:
    if not (folder / "config.json").is_file():
        raise UsageError(f"{flag} {folder}: not a transformers model folder (no config.json)")
    if not any(folder.glob("*.safetensors")):
        if any(folder.glob("*.bin")):
            raise UsageError(f"{flag} {folder}: has only pickle .bin weights, which can run arbitrary code when "
                             f"loaded; imagegen loads safetensors only")
        raise UsageError(f"{flag} {folder}: no .safetensors weights")


def _adapter_files(given: dict, table: dict, ctx: ResolveContext) -> tuple[str, str | None, str | None, str, bool]:
    """(model, revision, subfolder, weight file, overridden): the adapter the request names, else the preset's."""
    model = given.get("ip_adapter_model")
    overridden = model is not None
    if model is None:
        model = table.get("model")
        if model is None:
            others = ctx.presets_with("ip_adapter")
            hint = f" (the {ctx.family.name} presets with one: {', '.join(others)})" if others else ""
            raise UsageError(f"--ip-adapter: preset {ctx.preset.name!r} has no IP-Adapter{hint}; pass "
                             f"--ip-adapter-model REPO_OR_FOLDER (and --image-encoder)")
    model, revision = split_revision(model)
    model = canonical_weights(model, "--ip-adapter-model")
    subfolder = given.get("ip_adapter_subfolder", None if overridden else table.get("subfolder"))
    weight = given.get("ip_adapter_weight", None if overridden else table.get("weight"))
    if os.path.isdir(model):
        weight = _local_weight(Path(model), subfolder, weight)
    else:
        weight = weight or WEIGHT
        _refuse_pickle(weight, f"--ip-adapter-weight {weight}")
    return model, revision, subfolder, weight, overridden


def _encoder_source(given: dict, table: dict, model: str, subfolder: str | None, overridden: bool,
                    family) -> tuple[str, str | None, str | None]:
    """(encoder, revision, subfolder): as given, else beside a local adapter, else the preset's."""
    encoder, encoder_subfolder = given.get("image_encoder"), given.get("image_encoder_subfolder")
    if encoder is None:
        beside = Path(model, subfolder or "", "image_encoder")
        if overridden and os.path.isdir(model) and beside.is_dir():
            encoder = str(beside)
        elif table.get("image_encoder"):
            encoder = table["image_encoder"]
            encoder_subfolder = encoder_subfolder or table.get("image_encoder_subfolder")
        else:
            raise UsageError(f"--ip-adapter-model {model}: name its image encoder with --image-encoder REPO_OR_FOLDER "
                             f"(a {family.ip_adapter_encoder})")
    encoder, encoder_revision = split_revision(encoder)
    encoder = canonical_weights(encoder, "--image-encoder")
    if os.path.isdir(encoder):
        _check_encoder_folder(Path(encoder, encoder_subfolder or ""), "--image-encoder")
    return encoder, encoder_revision, encoder_subfolder


def _record(spec: IPAdapterSpec, family) -> dict:
    return {
        "images": [image.record() for image in spec.images],
        "scale": spec.scale,
        "model": {"id": spec.model, "revision": resolved_revision(spec.model, spec.revision),
                  "subfolder": spec.subfolder, "weight": spec.weight},
        "image_encoder": {"id": spec.image_encoder,
                          "revision": resolved_revision(spec.image_encoder, spec.image_encoder_revision),
                          "subfolder": spec.image_encoder_subfolder, "class": family.ip_adapter_encoder},
    }


_OPTIONAL_TEXT = (str, type(None))
_RECORD_SHAPE = {
    "images": [{"path": str, "sha256": str}],
    "scale": (int, float),
    "model": {"id": str, "revision": _OPTIONAL_TEXT, "subfolder": _OPTIONAL_TEXT, "weight": str},
    "image_encoder": {"id": str, "revision": _OPTIONAL_TEXT, "subfolder": _OPTIONAL_TEXT},
}


class IPAdapter(Adapter):
    name = "ip_adapter"
    fields = FIELDS
    preset_table = "ip_adapter"
    in_place = True
    record_shape = _RECORD_SHAPE

    def check_preset_table(self, table, where: str) -> dict:
        """[ip_adapter]: model, subfolder, weight (.safetensors), image_encoder, image_encoder_subfolder, scale."""
        if not isinstance(table, dict):
            raise UsageError(f"{where}: ip_adapter: must be a table ([ip_adapter])")
        if unknown := sorted(set(table) - TABLE_KEYS):
            raise UsageError(f"{where}: ip_adapter: unknown key {unknown[0]!r}{closest(unknown[0], TABLE_KEYS)}; "
                             f"valid keys: {', '.join(sorted(TABLE_KEYS))}")
        for key in ("model", "image_encoder"):
            if key not in table:
                raise UsageError(f"{where}: ip_adapter: missing key {key!r}")
        for key, value in table.items():
            if key == "scale":
                try:
                    FIELDS[1].parse(value)
                except ValueError as exc:
                    raise UsageError(f"{where}: ip_adapter.scale: {exc}") from None
            elif not isinstance(value, str) or not value.strip():
                raise UsageError(f"{where}: ip_adapter.{key}: must be a non-empty string, got {value!r}")
        if "weight" in table and not table["weight"].endswith(".safetensors"):
            raise UsageError(f"{where}: ip_adapter.weight: {table['weight']!r} is not a .safetensors file (pickle "
                             f"weights can run arbitrary code when loaded)")
        return dict(table)

    def resolve(self, given: dict, ctx: ResolveContext) -> IPAdapterSpec | None:
        """Every input checked (reference images hashed, files safetensors): no weights load."""
        paths = given.get("ip_adapter") or ()
        if not paths:
            return None
        family = ctx.family
        if family.ip_adapter_encoder is None:
            raise UsageError(f"--ip-adapter: {family.name} models have no IP-Adapter support in diffusers")
        if len(paths) > family.ip_adapter_images:
            many = family.ip_adapter_images
            raise UsageError(f"--ip-adapter: {family.name}'s IP-Adapter takes {many} reference "
                             f"image{'s' if many != 1 else ''}; got {len(paths)}")
        table = ctx.preset.tables.get("ip_adapter") or {}
        model, revision, subfolder, weight, overridden = _adapter_files(given, table, ctx)
        encoder, encoder_revision, encoder_subfolder = _encoder_source(given, table, model, subfolder, overridden,
                                                                       family)
        scale = given.get("ip_scale")
        if scale is None:
            scale = table.get("scale", DEFAULT_SCALE)
        images = tuple(check_image(p, label=f"--ip-adapter {p}") for p in paths)
        spec = IPAdapterSpec(images=images, scale=scale, model=model, revision=revision, subfolder=subfolder,
                             weight=weight, image_encoder=encoder, image_encoder_revision=encoder_revision,
                             image_encoder_subfolder=encoder_subfolder)
        spec.record.update(_record(spec, family))
        return spec

    def adjust(self, spec: IPAdapterSpec, merged: dict, top: dict, family) -> list[str]:
        """A family whose adapters act through true CFG gets it, unless --cfg was given."""
        wanted = family.ip_adapter_cfg
        if wanted is None or merged["cfg"] > 1:
            return []
        if "cfg" in top:
            return [f"{family.name}: the IP-Adapter works through true CFG, which --cfg {merged['cfg']:g} leaves off; "
                    f"expect a weak effect (try --cfg {wanted:g})"]
        merged["cfg"] = wanted
        return [f"{family.name}: the IP-Adapter needs true CFG: --cfg set to {wanted:g} (pass --cfg to choose)"]

    def key(self, spec: IPAdapterSpec) -> tuple:
        return spec.weights_key()

    def apply(self, pipe, spec: IPAdapterSpec, loaded) -> None:
        encoder, processor = _encoder(spec, loaded)
        pipe.register_modules(image_encoder=encoder, feature_extractor=processor)
        try:
            pipe.load_ip_adapter(spec.model, weight_name=spec.weight, revision=spec.revision,
                                 subfolder=spec.subfolder or "", **loaded.family.ip_adapter_load_kwargs())
        except Exception as exc:
            pipe.register_modules(image_encoder=None, feature_extractor=None)
            raise _adapter_error(spec, load_error(spec.model, spec.revision, exc, flag="--ip-adapter-model"),
                                 exc) from exc
        pipe.set_ip_adapter_scale(spec.scale)

    def update(self, pipe, spec: IPAdapterSpec) -> None:
        pipe.set_ip_adapter_scale(spec.scale)

    def remove(self, pipe, loaded) -> None:
        pipe.unload_ip_adapter()

    def call_arguments(self, spec: IPAdapterSpec, family, task: str, count: int = 1) -> dict:
        """The reference images (several images of one adapter are nested in one list)."""
        images = [load_rgb(i) for i in spec.images]
        return {"ip_adapter_image": images[0] if len(images) == 1 else [images]}

    def hash_value(self, spec: IPAdapterSpec) -> Any:
        return [[i.sha256 for i in spec.images], spec.scale, list(spec.weights_key())]

    def a1111(self, part: dict) -> dict[str, str]:
        model = part["model"]
        where = f"{model['id']}/{model.get('subfolder') or ''}/{model['weight']}".replace("//", "/")
        return {"IP-Adapter": where, "IP-Adapter scale": f"{part['scale']:g}"}

    def replay(self, part: dict) -> dict:
        if not part:
            return {}
        return {
            "ip_adapter": [image["path"] for image in part["images"]],
            "ip_scale": part["scale"],
            "ip_adapter_model": pinned(part["model"]),
            "ip_adapter_subfolder": part["model"].get("subfolder"),
            "ip_adapter_weight": part["model"]["weight"],
            "image_encoder": pinned(part["image_encoder"]),
            "image_encoder_subfolder": part["image_encoder"].get("subfolder"),
        }

    def inputs(self, part: dict) -> dict[str, str]:
        return {image["path"]: image["sha256"] for image in part.get("images", ())}

    def map_paths(self, part: dict, image, weights) -> dict:
        return {**part, "images": [{**i, "path": image(i["path"])} for i in part["images"]],
                "model": weights(part["model"], "--ip-adapter-model"),
                "image_encoder": weights(part["image_encoder"], "--image-encoder")}


def _encoder(spec: IPAdapterSpec, loaded):
    """The image encoder and its processor, loaded once per loaded model."""
    key = ("image_encoder", spec.image_encoder, spec.image_encoder_revision, spec.image_encoder_subfolder)
    if key not in loaded.cache:
        import torch
        import transformers

        kwargs = {"revision": spec.image_encoder_revision, "subfolder": spec.image_encoder_subfolder or ""}
        try:
            cls = getattr(transformers, loaded.family.ip_adapter_encoder)
            encoder = cls.from_pretrained(spec.image_encoder, dtype=getattr(torch, loaded.dtype),
                                          use_safetensors=True, **kwargs)
            processor = loaded.family.ip_adapter_processor(encoder, spec.image_encoder, kwargs)
        except Exception as exc:
            error = load_error(spec.image_encoder, spec.image_encoder_revision, exc, flag="--image-encoder")
            raise type(error)(f"image encoder: {error}") from exc
        loaded.cache[key] = (encoder.to(loaded.device).eval(), processor)
    return loaded.cache[key]


def _adapter_error(spec: IPAdapterSpec, error: Exception, exc: Exception) -> Exception:
    import textwrap

    text = "\n".join(str(e) for e in (exc, exc.__cause__) if e)
    if "size mismatch" in text or "shape" in text.lower():
        # torch lists one "size mismatch for <param>: ..." line per tensor: name the first, count the others.
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        first = next((ln for ln in lines if "size mismatch" in ln or "shape" in ln.lower()), lines[0])
        more = sum("size mismatch" in ln for ln in lines) - 1
        detail = textwrap.shorten(first, 400, placeholder=" ...") + (f" (and {more} more)" if more > 0 else "")
        return RunError(f"--ip-adapter-model {spec.model}: its weights do not fit this model (made for another "
                        f"model or size): {detail}")
    return type(error)(f"IP-Adapter: {error}")
