"""Request fields, declared once. Each field names its parser, the JSON types a prompt-file line may give it, where a
record holds it, whether it enters the recipe hash and the call's group key, and its command-line option. The
request type, prompt-file checks, metadata read-back, hashes and CLI options are all derived from these entries."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from .quantize import parse_quantize
from .runtime import MEMORY_MODES, OFFLOADS, parse_cache, parse_compile

MAX_SEED = 2**63 - 1
DTYPES = {
    "auto": "auto",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float32": "float32", "fp32": "float32", "float": "float32",
}
METADATA_MODES = ("portable", "full", "none")
DEFAULT_NAME = "{index:04d}-{seed}"
GENERATION, MODEL, OUTPUT = "Generation", "Model", "Output"  # --help panels
SPEED = "Memory and speed"


@dataclass(frozen=True)
class Field:
    """One request field: how it is parsed, read from files and records, hashed and offered on the command line."""

    name: str
    parse: Callable[[Any], Any]  # a raw value (flag text, TOML, JSON) -> the checked value; raises ValueError
    json: tuple[type, ...]  # the JSON types a prompt-file line may give (a quoted "30" for steps is an error)
    help: str
    line: bool = True  # a prompt-file line may set it (run-wide settings come from flags only)
    replay: str | Callable[[dict], Any] | None = None  # where a record holds it: a dotted path or a function
    hashed: tuple[str, ...] = ()  # ResolvedRequest attributes that enter the recipe hash
    call: tuple[str, ...] = ()  # ResolvedRequest attributes that shape the pipeline call (the batch group key)
    path: str | None = None  # "image" or "weights": relative paths on a line are relative to the prompt file
    flags: tuple[str, ...] = ()  # option names; default: --name-with-dashes
    metavar: str | None = None
    repeat: bool = False  # a repeatable option (one value per net or image)
    json_words: str | None = None  # how the JSON types are named in an error
    literals: tuple = ()  # JSON values accepted besides the types ("random" for a seed)
    preset: bool = False  # a preset's [defaults] table may set it
    items: tuple[type, ...] = ()  # the JSON types of a list's elements; default: the field's non-list types
    panel: str | None = None  # the --help panel listing its option; an adapter's fields get the adapter's
    unhashed: Any = None  # a value left out of the recipe hash: what records from before the field existed meant
    bare: str | None = None  # what the option given without a value means (None: it always takes one)

    @property
    def item_types(self) -> tuple[type, ...]:
        return self.items or tuple(t for t in self.json if t is not list)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def options(self) -> tuple[str, ...]:
        return self.flags or (self.flag,)

    def type_words(self) -> str:
        if self.json_words:
            return self.json_words
        words = {str: "a string", int: "an integer", float: "a number", list: "a list"}
        names = [words[t] for t in self.json if not (t is int and float in self.json)]
        return " or ".join(names)

    def read(self, record: dict) -> Any:
        """This field's value in a record read back (None where the record has none)."""
        if callable(self.replay):
            return self.replay(record)
        value: Any = record
        for key in self.replay.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def rebase(self, value: Any, rebased: Callable[[str, bool], str]) -> Any:
        """The value with each file path passed through `rebased(path, is_image)`."""
        if isinstance(value, tuple):
            return tuple(rebased(v, self.path == "image") for v in value)
        return rebased(value, self.path == "image")


# ---- parsers: each takes a raw value (from TOML, JSON or a flag) and returns it checked, or raises ValueError.


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"must be an integer from {lo} to {hi}, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"must be an integer from {lo} to {hi}, got {value!r}") from None
        if not lo <= number <= hi:
            raise ValueError(f"must be from {lo} to {hi}, got {number}")
        return number

    return parse


def number(lo: float, hi: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"must be a number from {lo:g} to {hi:g}, got {value!r}")
        try:
            result = float(value)
        except ValueError:
            raise ValueError(f"must be a number from {lo:g} to {hi:g}, got {value!r}") from None
        if not lo <= result <= hi:  # also refuses nan
            raise ValueError(f"must be from {lo:g} to {hi:g}, got {value!r}")
        return result

    return parse


def numbers(lo: float, hi: float) -> Callable[[Any], tuple[float, ...]]:
    """One number or several (a list, or '0.7,0.5' / '0.7;0.5'): one per net."""
    one = number(lo, hi)

    def parse(value: Any) -> tuple[float, ...]:
        parts = value if isinstance(value, (list, tuple)) else [value]
        out = []
        for part in parts:
            if isinstance(part, str):
                out.extend(one(p) for p in re.split(r"[,;]", part) if p.strip())
            else:
                out.append(one(part))
        if not out:
            raise ValueError("must be a number or a list of numbers")
        return tuple(out)

    return parse


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    if "\x00" in value:  # PNG text chunks (and file systems) cannot hold it
        raise ValueError("must not contain a NUL character (\\x00)")
    return value


# Characters in a prompt: far beyond any real one (CLIP reads 77 tokens a chunk); megabytes would tokenize for minutes.
MAX_PROMPT = 20_000


def prompt_text(value: Any) -> str:
    value = text(value)
    if len(value) > MAX_PROMPT:
        raise ValueError(f"is {len(value):,} characters long; at most {MAX_PROMPT:,} are allowed")
    return value


def name(value: Any) -> str:
    value = text(value).strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def names(value: Any) -> tuple[str, ...]:
    """One name or several (a list, a repeated flag, or 'a;b' in a CSV cell)."""
    parts = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for part in parts:
        out.extend(p.strip() for p in text(part).split(";") if p.strip())
    if not out:
        raise ValueError("must not be empty")
    return tuple(out)


def parse_seed(value: Any) -> int | None:
    """A seed from 0 to 2**63-1; -1 (A1111's spelling) means random."""
    if value in (-1, "-1", "random"):
        return None
    return integer(0, MAX_SEED)(value)


def parse_size(value: Any) -> tuple[int, int]:
    """'WIDTHxHEIGHT' (or [w, h]) -> (width, height)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        w, h = value
    elif isinstance(value, str) and (m := re.fullmatch(r"\s*(\d+)\s*[xX×*]\s*(\d+)\s*", value)):
        w, h = m.groups()
    else:
        raise ValueError(f"must be WIDTHxHEIGHT such as 1024x768, got {value!r}")
    return (integer(16, 16384)(w), integer(16, 16384)(h))


def choice(table: dict[str, str], hint: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        key = text(value).lower()
        if key not in table:
            raise ValueError(f"must be {hint}, got {value!r}")
        return table[key]

    return parse


def parse_device(value: Any) -> str:
    key = text(value).lower()
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?|xpu(:\d+)?", key):
        raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps, got {value!r}")
    return key


parse_dtype = choice(DTYPES, f"one of {', '.join(sorted(set(DTYPES.values())))}")
parse_metadata = choice({m: m for m in METADATA_MODES}, f"one of {', '.join(METADATA_MODES)}")
PROMPT_SYNTAXES = ("a1111", "plain")
parse_syntax = choice({s: s for s in PROMPT_SYNTAXES}, f"one of {', '.join(PROMPT_SYNTAXES)}")


def _recorded_syntax(record: dict) -> str:
    return record.get("prompt_syntax") or "plain"  # records from before prompt syntax passed prompts literally


parse_offload = choice({o: o for o in OFFLOADS}, f"one of {', '.join(OFFLOADS)}")
parse_switch = choice({"on": "on", "off": "off", "true": "on", "false": "off"}, "on or off")


def _attention(value: Any) -> str:
    return name(value).lower()


def _recorded_config(record: dict) -> str | None:
    config = (record.get("model") or {}).get("config")
    return config.get("id") if isinstance(config, dict) else None


def _one(value: Any) -> int:
    return 1  # a replayed record is one image


# The fields of every generating command, in the order options are listed. Adapters add theirs (imagegen.adapters).
CORE_FIELDS: tuple[Field, ...] = (
    Field("prompt", prompt_text, (str,), "What to draw.", replay="prompt", hashed=("prompt",)),
    Field("prompt_syntax", parse_syntax, (str,), "a1111 (default): (word:1.3), (word), [word], BREAK, <lora:NAME:SCALE> "
          "and prompts past 75 tokens chunked as A1111 does; plain: the prompt as written, cut at the encoder's "
          "length (with a note).", replay=_recorded_syntax, hashed=("prompt_syntax",), call=("prompt_syntax",),
          metavar="a1111|plain", unhashed="plain", panel=GENERATION),
    Field("negative", prompt_text, (str,), "Negative prompt (acts through CFG).", replay="negative", hashed=("negative",),
          preset=True, panel=GENERATION),
    Field("seed", parse_seed, (int,), "First seed; image i gets seed+i. Default: random, printed and recorded.",
          replay="seed", hashed=("seed",), metavar="INT", literals=("random",), panel=GENERATION),
    Field("steps", integer(1, 1000), (int,), "Denoising steps.", replay="steps", hashed=("steps",),
          call=("steps",), metavar="INT", preset=True, panel=GENERATION),
    Field("cfg", number(0.0, 100.0), (int, float), "Classifier-free guidance scale.", replay="cfg", hashed=("cfg",),
          call=("cfg",), metavar="FLOAT", preset=True, panel=GENERATION),
    Field("guidance", number(0.0, 100.0), (int, float),
          "Flux-dev's distilled guidance embedding (not CFG; refused for a model without one, such as schnell).", replay="guidance",
          hashed=("guidance",), call=("guidance",), metavar="FLOAT", preset=True, panel=GENERATION),
    Field("size", parse_size, (str, list), "Image size, e.g. 1024x768; a multiple of the model's VAE scale x patch size.",
          replay=lambda r: (r.get("width"), r.get("height")), hashed=("width", "height"), call=("width", "height"),
          metavar="WxH", json_words='"WxH" or [w, h]', preset=True, items=(int,), panel=GENERATION),
    Field("scheduler", name, (str,), "Scheduler by A1111 ('DPM++ 2M Karras'), ComfyUI ('dpmpp_2m karras'), slug or "
          "diffusers class name; see `imagegen schedulers`.", replay="scheduler.name", hashed=("scheduler",),
          call=("scheduler",), flags=("--scheduler", "-s"), preset=True, panel=GENERATION),
    Field("n", integer(1, 100_000), (int,), "Number of images.", replay=_one, flags=("-n", "--n"), metavar="INT",
          panel=GENERATION),
    Field("batch_size", integer(1, 1024), (int,), "Images per pipeline call (results do not depend on it).",
          line=False, replay=_one, metavar="INT", panel=GENERATION),
    Field("preset", name, (str,), "Preset name or .toml path; see `imagegen presets list`. Default: sdxl; `demo` runs "
          "offline with no download.", replay="model.preset", flags=("--preset", "-p"), panel=MODEL),
    Field("model", name, (str,), "A diffusers folder, hub repo id or builtin:demo (overrides the preset's model).",
          replay="model.id", hashed=("model",), call=("model",), flags=("--model", "-m"), panel=MODEL),
    Field("revision", name, (str,), "Hub revision (branch, tag or commit).", replay="model.revision",
          hashed=("revision",), call=("revision",), panel=MODEL),
    Field("variant", name, (str,), "Weight variant, e.g. fp16.", replay="model.variant", hashed=("variant",),
          call=("variant",), panel=MODEL),
    Field("config", name, (str,), "The architecture of a single-file --model: a diffusers folder or hub repo of the "
          "same model (configs and tokenizers; the components the file lacks come from here when it holds them, else "
          "from the preset's repo). Default: the base repo its tensors point to, cached or shipped with imagegen.",
          replay=_recorded_config, hashed=("config",), call=("config",), metavar="DIR_OR_REPO", panel=MODEL),
    Field("dtype", parse_dtype, (str,), "auto (fp16/bf16 on GPU, fp32 on CPU), float16, bfloat16, float32.",
          line=False, replay="runtime.dtype", call=("dtype",), panel=MODEL),
    Field("device", parse_device, (str,), "auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.", line=False,
          replay="runtime.device", call=("device",), panel=MODEL),
    Field("memory", choice({m: m for m in MEMORY_MODES}, f"one of {', '.join(MEMORY_MODES)}"), (str,),
          "auto (default): on a CUDA GPU with no --offload or --quantize given, the fastest memory plan that fits its "
          "free memory (none, VAE tiling, model offload, int8, group offload, nf4, sequential offload: what `imagegen "
          "plan` shows), said before loading and recorded; off: exactly what the flags say.", line=False,
          replay=lambda record: "off", metavar="auto|off", preset=True, panel=SPEED),  # the record holds what ran
    Field("offload", parse_offload, (str,), "Keep weights on the CPU and move them to the GPU as they run: model "
          "(a component at a time), group (a block at a time, streamed on CUDA), sequential (a layer at a time; GPU "
          "only); auto: the memory plan's choice (as --memory auto, even with --memory off; none off CUDA); none "
          "(default) keeps everything on the device.", line=False, replay="runtime.offload",
          metavar="none|model|group|sequential|auto", preset=True, panel=SPEED),
    Field("vae_tiling", parse_switch, (str,), "Decode the image in tiles (less memory for large images).", line=False,
          replay="runtime.vae_tiling", hashed=("vae_tiling",), metavar="on|off", preset=True, unhashed="off",
          panel=SPEED),
    Field("vae_slicing", parse_switch, (str,), "Decode a batch one image at a time (less memory, same pixels).",
          line=False, replay="runtime.vae_slicing", metavar="on|off", preset=True, panel=SPEED),
    # attention and cache may differ per prompt-file line: a batch runs each setting's jobs as one group (one load)
    Field("attention", _attention, (str,), "The denoiser's attention backend (diffusers' set_attention_backend): auto "
          "(PyTorch's SDPA), native, flash, sage, ...; checked against what is installed.",
          replay="runtime.attention", hashed=("attention",), call=("attention",), metavar="NAME", preset=True,
          unhashed="auto", panel=SPEED),
    Field("cache", parse_cache, (str,), "Reuse the denoiser's work between steps (diffusers' cache hooks; transformer "
          "models such as Flux): fbcache[:THRESHOLD] (First Block Cache, default 0.05), taylorseer[:INTERVAL], "
          "magcache[:THRESHOLD] (Flux), fastercache[:SKIP], or none (default). Changes pixels: recorded.",
          replay="runtime.cache", hashed=("cache",), call=("cache",), metavar="NAME[:VALUE]", preset=True,
          unhashed="none", panel=SPEED),
    Field("quantize", parse_quantize, (str,), "Load weights quantized, through diffusers' quantization configs: "
          "int8 or fp8 (torchao weight-only), int4 (torchao) or nf4 (bitsandbytes; both CUDA only) for the denoiser; "
          "COMPONENT=KIND for another part (text_encoder_2=int8: Flux's T5); gguf:FILE for a GGUF transformer "
          "(city96's files); comma-separated; none (default). Changes pixels: recorded.",
          line=False, replay="runtime.quantize", hashed=("quantize",), metavar="KIND|COMPONENT=KIND|gguf:FILE,...",
          preset=True, unhashed="none", panel=SPEED),
    Field("compile", parse_compile, (str, bool), "torch.compile the denoiser; the first image pays the warm-up. "
          "regional (a bare --compile): each repeated block once, through diffusers' compile_repeated_blocks, about "
          "the same speed as full at a fraction of the warm-up; full: the whole denoiser; none (default).", line=False,
          replay="runtime.compile", hashed=("compile",), metavar="[regional|full|none]", preset=True,
          unhashed="none", panel=SPEED, bare="regional", json_words="a string or true/false"),
    Field("out", name, (str,), "Output folder. Default: ./outputs", line=False, flags=("--out", "-o"), panel=OUTPUT),
    Field("name", name, (str,), "File-name template; placeholders {index} {seed} {prompt} {preset} {scheduler} "
          "{steps} {cfg} {width} {height} {model} {date}. Default: {index:04d}-{seed}", panel=OUTPUT),
    Field("metadata", parse_metadata, (str,), "portable (PNG chunks + JSON sidecar; local folders by name + sha256, "
          "input images by relative path: no absolute paths), full (absolute paths too) or none (no metadata). "
          "Default: portable", line=False, panel=OUTPUT),
)
