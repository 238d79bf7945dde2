"""The command line: a thin Typer layer that builds a Request, calls the core once and renders the result."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Optional

import typer

from .errors import ImagegenError
from .families import cfg_help_text

app = typer.Typer(
    name="imagegen",
    help="Generate images with diffusers pipelines: presets, schedulers by any name, reproducible metadata.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
presets_app = typer.Typer(help="List and show presets.", no_args_is_help=True)
app.add_typer(presets_app, name="presets")

# ---- options shared by every generating command (None means "not given": lower layers decide)

Negative = Annotated[Optional[str], typer.Option("--negative", help="Negative prompt (acts through CFG).")]
Seed = Annotated[Optional[str], typer.Option("--seed", metavar="INT", help="First seed; image i gets seed+i. Default: random, printed and recorded.")]
Steps = Annotated[Optional[str], typer.Option("--steps", metavar="INT", help="Denoising steps.")]
Cfg = Annotated[Optional[str], typer.Option("--cfg", metavar="FLOAT", help="Classifier-free guidance scale. " + cfg_help_text() + ".")]
Guidance = Annotated[Optional[str], typer.Option("--guidance", metavar="FLOAT", help="Flux-dev's distilled guidance embedding (not CFG; schnell ignores it).")]
Size = Annotated[Optional[str], typer.Option("--size", metavar="WxH", help="Image size, e.g. 1024x768; a multiple of the model's VAE scale x patch size.")]
Scheduler = Annotated[Optional[str], typer.Option("--scheduler", "-s", help="Scheduler by A1111 ('DPM++ 2M Karras'), ComfyUI ('dpmpp_2m karras'), slug or diffusers class name; see `imagegen schedulers`.")]
Count = Annotated[Optional[str], typer.Option("-n", "--n", metavar="INT", help="Number of images.")]
BatchSize = Annotated[Optional[str], typer.Option("--batch-size", metavar="INT", help="Images per pipeline call (results do not depend on it).")]
Preset = Annotated[Optional[str], typer.Option("--preset", "-p", help="Preset name or .toml path; see `imagegen presets list`. Default: sdxl; `demo` runs offline with no download.")]
Model = Annotated[Optional[str], typer.Option("--model", "-m", help="A diffusers folder, hub repo id or builtin:demo (overrides the preset's model).")]
Revision = Annotated[Optional[str], typer.Option("--revision", help="Hub revision (branch, tag or commit).")]
Variant = Annotated[Optional[str], typer.Option("--variant", help="Weight variant, e.g. fp16.")]
Dtype = Annotated[Optional[str], typer.Option("--dtype", help="auto (fp16/bf16 on GPU, fp32 on CPU), float16, bfloat16, float32.")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.")]
Out = Annotated[Optional[str], typer.Option("--out", "-o", help="Output folder. Default: ./outputs")]
Name = Annotated[Optional[str], typer.Option("--name", help="File-name template; placeholders {index} {seed} {prompt} {preset} {scheduler} {steps} {cfg} {width} {height} {model} {date}. Default: {index:04d}-{seed}")]
Metadata = Annotated[Optional[str], typer.Option("--metadata", help="full (PNG chunks + JSON sidecar) or none (privacy).")]
# ControlNet and IP-Adapter (imagegen.controlnet, imagegen.ip_adapter): list options repeat, one per net or image.
Control = Annotated[Optional[list[str]], typer.Option("--control", metavar="TYPE:IMAGE", help="Steer with a ControlNet: canny:IMAGE (edges found with OpenCV), depth:MAP (used as given) or raw:MAP (for the net named by --controlnet-model). Repeat for several nets. The map is fitted to the output size and saved as <name>.control.png.")]
ControlScale = Annotated[Optional[list[str]], typer.Option("--control-scale", metavar="FLOAT", help="ControlNet strength (default 1): one value for every net, or one per --control (repeat, or 0.7,0.5).")]
ControlStart = Annotated[Optional[list[str]], typer.Option("--control-start", metavar="FLOAT", help="Fraction of the steps at which each net starts steering (default 0); one or one per --control.")]
ControlEnd = Annotated[Optional[list[str]], typer.Option("--control-end", metavar="FLOAT", help="Fraction of the steps at which each net stops (default 1); one or one per --control.")]
ControlnetModel = Annotated[Optional[list[str]], typer.Option("--controlnet-model", metavar="REPO|DIR", help="The net for each --control, in order (hub repo id, repo@revision or local folder; '-' keeps the preset's). Default: the preset's net for the type.")]
CannyLow = Annotated[Optional[str], typer.Option("--canny-low", metavar="INT", help="Canny's lower hysteresis threshold (default 100).")]
CannyHigh = Annotated[Optional[str], typer.Option("--canny-high", metavar="INT", help="Canny's upper hysteresis threshold (default 200).")]
IpAdapter = Annotated[Optional[list[str]], typer.Option("--ip-adapter", metavar="IMAGE", help="Image prompt: style or subject from a reference image (repeat for several; SD3 takes one). Flux turns on true CFG for it.")]
IpScale = Annotated[Optional[str], typer.Option("--ip-scale", metavar="FLOAT", help="IP-Adapter strength (default: the preset's, else 1).")]
IpAdapterModel = Annotated[Optional[str], typer.Option("--ip-adapter-model", metavar="REPO|DIR", help="IP-Adapter repo id (repo@revision) or local folder. Default: the preset's.")]
IpAdapterSubfolder = Annotated[Optional[str], typer.Option("--ip-adapter-subfolder", help="Subfolder of the adapter file in that repo or folder.")]
IpAdapterWeight = Annotated[Optional[str], typer.Option("--ip-adapter-weight", metavar="FILE", help="The adapter's .safetensors file name (pickle .bin files are refused).")]
ImageEncoder = Annotated[Optional[str], typer.Option("--image-encoder", metavar="REPO|DIR", help="The adapter's image encoder (CLIP vision for SDXL and Flux, SigLIP for SD3). Default: the preset's, or DIR/image_encoder beside a local adapter.")]
ImageEncoderSubfolder = Annotated[Optional[str], typer.Option("--image-encoder-subfolder", help="Subfolder of the image encoder in its repo or folder.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON result on stdout.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]


def _flags(**values) -> "Request":
    from .request import Request

    return Request.from_mapping({k: v for k, v in values.items() if v is not None}, where=None)


def _conditioning(values: dict) -> dict:
    """The ControlNet and IP-Adapter flags among a command's arguments, as request fields (an empty repeatable
    option is not given)."""
    from .controlnet import SETTINGS
    from .ip_adapter import FIELDS

    return {k: (list(values[k]) if isinstance(values[k], (list, tuple)) else values[k])
            for k in ("control", *SETTINGS, *FIELDS) if values.get(k) not in (None, [], ())}


def _progress(quiet: bool):
    from .progress import NullProgress, RichProgress

    return NullProgress() if quiet else RichProgress()


def _emit(result, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")


@app.command()
def txt2img(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    negative: Negative = None, seed: Seed = None, steps: Steps = None, cfg: Cfg = None, guidance: Guidance = None,
    size: Size = None, scheduler: Scheduler = None, n: Count = None, batch_size: BatchSize = None,
    preset: Preset = None, model: Model = None, revision: Revision = None, variant: Variant = None,
    dtype: Dtype = None, device: Device = None, out: Out = None, name: Name = None, metadata: Metadata = None,
    control: Control = None, control_scale: ControlScale = None, control_start: ControlStart = None,
    control_end: ControlEnd = None, controlnet_model: ControlnetModel = None, canny_low: CannyLow = None,
    canny_high: CannyHigh = None, ip_adapter: IpAdapter = None, ip_scale: IpScale = None,
    ip_adapter_model: IpAdapterModel = None, ip_adapter_subfolder: IpAdapterSubfolder = None,
    ip_adapter_weight: IpAdapterWeight = None, image_encoder: ImageEncoder = None,
    image_encoder_subfolder: ImageEncoderSubfolder = None,
    quiet: Quiet = False, json_: Json = False, debug: Debug = False,
) -> None:
    """Generate images from a text prompt (optionally steered by ControlNets and an IP-Adapter)."""
    from .generate import run
    from .request import check_companions, resolve

    flags = _flags(
        prompt=prompt, negative=negative, seed=seed, steps=steps, cfg=cfg, guidance=guidance, size=size,
        scheduler=scheduler, n=n, batch_size=batch_size, preset=preset, model=model, revision=revision,
        variant=variant, dtype=dtype, device=device, out=out, name=name, metadata=metadata,
        **_conditioning(locals()),
    )
    check_companions(flags)
    _emit(run(resolve(flags), progress=_progress(quiet)), json_)


@app.command()
def batch(
    file: Annotated[str, typer.Argument(metavar="FILE", help="Prompt file: .txt (one prompt a line), .jsonl or .csv (per-line fields); - reads stdin.")],
    negative: Negative = None,
    seed: Annotated[Optional[str], typer.Option("--seed", metavar="INT", help="The run's base seed: a line without a seed gets one derived from it and the line's job index. Default: random, kept in the manifest so a rerun makes the same images.")] = None,
    steps: Steps = None, cfg: Cfg = None, guidance: Guidance = None, size: Size = None, scheduler: Scheduler = None,
    n: Annotated[Optional[str], typer.Option("-n", "--n", metavar="INT", help="Images per line (a line's n beats it).")] = None,
    batch_size: Annotated[str, typer.Option("--batch-size", metavar="INT|auto", help="Images per pipeline call; auto picks by device and latent size. Results do not depend on it.")] = "auto",
    preset: Preset = None, model: Model = None, revision: Revision = None, variant: Variant = None,
    dtype: Dtype = None, device: Device = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Output folder; a rerun with the same folder resumes. Default: ./outputs")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="File-name template (see txt2img --help); {index} is the image's number in the batch. Default: {index:05d}-{seed}-{prompt}")] = None,
    metadata: Metadata = None,
    format_: Annotated[Optional[str], typer.Option("--format", help="Prompt-file format when the name does not say: txt, jsonl, csv.")] = None,
    expand: Annotated[bool, typer.Option("--expand", help="Expand {a|b|c} alternatives into one job per combination.")] = False,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Run the valid lines even if some are invalid (each is reported).")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Start over in a new folder (OUT-2, OUT-3, ...) instead of resuming; nothing is overwritten.")] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed job (default: record it and go on; exit code 3).")] = False,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the denoiser: pays off on long runs; the warm-up time is reported.")] = False,
    control: Control = None, control_scale: ControlScale = None, control_start: ControlStart = None,
    control_end: ControlEnd = None, controlnet_model: ControlnetModel = None, canny_low: CannyLow = None,
    canny_high: CannyHigh = None, ip_adapter: IpAdapter = None, ip_scale: IpScale = None,
    ip_adapter_model: IpAdapterModel = None, ip_adapter_subfolder: IpAdapterSubfolder = None,
    ip_adapter_weight: IpAdapterWeight = None, image_encoder: ImageEncoder = None,
    image_encoder_subfolder: ImageEncoderSubfolder = None,
    quiet: Quiet = False, json_: Json = False, debug: Debug = False,
) -> None:
    """Generate every prompt of a file: validated first, resumable, crash-safe (flags are every line's defaults)."""
    from .batch import prepare, run_batch
    from .errors import Interrupted, JobsFailed, UsageError
    from .request import PARSERS, parse_seed

    try:
        base_seed = parse_seed(seed) if seed is not None else None
    except ValueError as exc:
        raise UsageError(f"--seed: {exc}") from None
    size_arg = None if batch_size.strip().lower() == "auto" else batch_size
    if size_arg is not None:
        try:
            size_arg = PARSERS["batch_size"](size_arg)
        except ValueError as exc:
            raise UsageError(f"--batch-size: {exc}, or auto") from None
    flags = _flags(
        negative=negative, steps=steps, cfg=cfg, guidance=guidance, size=size, scheduler=scheduler, n=n,
        preset=preset, model=model, revision=revision, variant=variant, dtype=dtype, device=device, out=out,
        name=name, metadata=metadata,
        **_conditioning(locals()),
    )
    plan = prepare(file, flags, base_seed=base_seed, fmt=format_, expand=expand, skip_invalid=skip_invalid,
                   restart=restart)
    from .progress import NullBatchProgress, RichBatchProgress

    progress = NullBatchProgress() if quiet else RichBatchProgress()
    result = run_batch(plan, batch_size=size_arg, fail_fast=fail_fast, compile=compile_, progress=progress)
    if json_:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
    elif not quiet:
        _batch_summary(result)
    if result.interrupted:
        raise Interrupted(
            f"interrupted: {result.done} new images written, {result.remaining} to go; run the same command again "
            f"(same file and --out {result.out_dir}) to resume"
        )
    if result.failed:
        raise JobsFailed(
            f"{result.failed} image{'s' if result.failed != 1 else ''} failed (recorded in "
            f"{result.out_dir}/manifest.jsonl); a rerun retries them"
        )


def _batch_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"batch {result.out_dir}" + (f" (process {result.rank + 1} of {result.world})" if result.world > 1 else ""))
    table.caption = "skipped: already done, verified by sha256"
    for column in ("done", "skipped", "failed", "invalid", "wall", "img/s", "batch size"):
        table.add_column(column, justify="right")
    table.add_row(
        str(result.done + result.adopted), str(result.skipped), str(result.failed), str(result.invalid),
        f"{result.wall_s:.1f} s", f"{result.images_per_s:.2f}", result.batch_size,
    )
    console = Console(stderr=True)
    console.print(table)
    if result.compile_warmup_s is not None:
        console.print(f"compile warm-up: {result.compile_warmup_s:.1f} s", highlight=False)
    for failure in result.failures[:20]:
        console.print(f"[red]failed[/] line {failure['line']}: {failure['error']}", highlight=False, markup=False)


@app.command()
def compare(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    schedulers: Annotated[Optional[str], typer.Option("--schedulers", help="Scheduler axis: comma-separated names, e.g. 'Euler,DPM++ 2M Karras,UniPC'.")] = None,
    steps: Annotated[Optional[str], typer.Option("--steps", help="Step axis: 8,15,30 or a range 10-50:10.")] = None,
    cfg: Annotated[Optional[str], typer.Option("--cfg", help="CFG axis: 3,5,7 or a range 2-8:2.")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Seed axis: 1,2,3 or a range 1-4.")] = None,
    seed: Seed = None,
    reference: Annotated[Optional[str], typer.Option("--reference", metavar="SCHEDULER:STEPS", help="The cell every other is measured against. Default: the same scheduler at the largest step count.")] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Mean absolute pixel difference (0-255) from the reference still counted as converged.")] = 2.0,
    negative: Negative = None, guidance: Guidance = None, size: Size = None,
    preset: Preset = None, model: Model = None, revision: Revision = None, variant: Variant = None,
    dtype: Dtype = None, device: Device = None, out: Out = None,
    control: Control = None, control_scale: ControlScale = None, control_start: ControlStart = None,
    control_end: ControlEnd = None, controlnet_model: ControlnetModel = None, canny_low: CannyLow = None,
    canny_high: CannyHigh = None, ip_adapter: IpAdapter = None, ip_scale: IpScale = None,
    ip_adapter_model: IpAdapterModel = None, ip_adapter_subfolder: IpAdapterSubfolder = None,
    ip_adapter_weight: IpAdapterWeight = None, image_encoder: ImageEncoder = None,
    image_encoder_subfolder: ImageEncoderSubfolder = None,
    quiet: Quiet = False, json_: Json = False, debug: Debug = False,
) -> None:
    """Compare schedulers, step counts, CFG scales and seeds on one prompt: a labelled grid, a table and an answer."""
    from .compare import plan_compare, run_compare

    flags = _flags(negative=negative, seed=seed, guidance=guidance, size=size, preset=preset, model=model,
                   revision=revision, variant=variant, dtype=dtype, device=device, out=out,
                   **_conditioning(locals()),
                   )
    from .request import check_companions

    check_companions(flags)
    plan = plan_compare(prompt, flags, schedulers=schedulers, steps=steps, cfg=cfg, seeds=seeds,
                        reference=reference, tolerance=tolerance)
    from .progress import NullBatchProgress, RichBatchProgress

    result = run_compare(plan, progress=NullBatchProgress() if quiet else RichBatchProgress())
    if json_:
        from .compare_report import summary_json

        sys.stdout.write(summary_json(result) + "\n")
    elif not quiet:
        _compare_table(result)


def _compare_table(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from .compare_report import rows

    table = Table(title=f"compare {result.plan.out_dir}")
    for column in ("scheduler", "steps", "cfg", "seed", "time s", "s/step", "Δ ref", "PSNR dB"):
        table.add_column(column, justify="right")
    for r in rows(result):
        table.add_row(r["scheduler"], str(r["steps"]), f"{r['cfg']:g}", str(r["seed"]), f"{r['wall_s']:.2f}",
                      f"{r['s_per_step']:.3f}", "" if r["mean_abs_diff"] is None else f"{r['mean_abs_diff']:.2f}",
                      "" if r["psnr_db"] is None else str(r["psnr_db"]))
    console = Console(stderr=True)
    console.print(table)
    console.print(result.answer, highlight=False, markup=False)
    console.print("grid: " + ", ".join(str(p) for p in result.grids), highlight=False, markup=False)


@app.command()
def reproduce(
    source: Annotated[str, typer.Argument(metavar="FILE", help="An imagegen PNG or its .json sidecar.")],
    verify: Annotated[bool, typer.Option("--verify", help="Compare with the original; exit 4 if any pixel differs.")] = False,
    negative: Negative = None, seed: Seed = None, steps: Steps = None, cfg: Cfg = None, guidance: Guidance = None,
    size: Size = None, scheduler: Scheduler = None, model: Model = None, revision: Revision = None,
    dtype: Dtype = None, device: Device = None, out: Out = None, name: Name = None, metadata: Metadata = None,
    quiet: Quiet = False, json_: Json = False, debug: Debug = False,
) -> None:
    """Re-run an image's recorded recipe (flags override fields) into a new folder beside it."""
    from .reproduce import reproduce as do_reproduce

    overrides = _flags(
        negative=negative, seed=seed, steps=steps, cfg=cfg, guidance=guidance, size=size, scheduler=scheduler,
        model=model, revision=revision, dtype=dtype, device=device, out=out, name=name, metadata=metadata,
    )
    if verify and overrides.given().keys() - {"out", "name", "metadata", "device"}:
        from .errors import UsageError

        raise UsageError("--verify compares with the original: drop the recipe overrides (--out, --name, --device may stay)")
    progress = _progress(quiet)
    result = do_reproduce(source, verify=verify, overrides=overrides, progress=progress)
    if result.verification and not quiet:
        v = result.verification
        progress.console.print(f"[green]verified[/]: identical pixels (max pixel difference {v.max_pixel_diff})")
    _emit(result, json_)


@presets_app.command("list")
def presets_list(json_: Json = False, debug: Debug = False) -> None:
    """List the built-in and user presets."""
    from .paths import builtin_presets_dir
    from .presets import list_presets

    presets = list_presets()
    if json_:
        sys.stdout.write(json.dumps([_preset_json(p) for p in presets]) + "\n")
        return
    builtin = builtin_presets_dir().resolve()
    rows = []
    for p in presets:
        d = p.defaults
        rows.append([
            p.name, p.family, p.model, str(d.steps), f"{d.cfg:g}", f"{d.size[0]}x{d.size[1]}", d.scheduler,
            "built-in" if p.source.resolve().parent == builtin else str(p.source),
        ])
    _print_table(["preset", "family", "model", "steps", "cfg", "size", "scheduler", "source"], rows)


@presets_app.command("show")
def presets_show(name: Annotated[str, typer.Argument(help="Preset name or .toml path.")], json_: Json = False,
                 debug: Debug = False) -> None:
    """Show one preset: its model, defaults and allowed schedulers."""
    from .presets import load_preset

    preset = load_preset(name)
    data = _preset_json(preset)
    if json_:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    for key, value in data.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(value) or "(every sampler of the family)"
        sys.stdout.write(f"{key:12} {value}\n")


def _preset_json(p) -> dict:
    from .schedulers import SAMPLERS

    d = p.defaults.given()
    d["size"] = f"{d['size'][0]}x{d['size'][1]}"
    return {
        "name": p.name, "family": p.family, "model": p.model, "revision": p.revision, "variant": p.variant,
        "dtype": p.dtype, "description": p.description, "defaults": d,
        "schedulers": [SAMPLERS[s].a1111 for s in p.schedulers], "source": str(p.source),
    }


@app.command()
def schedulers(
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Only what works with this preset.")] = None,
    family: Annotated[Optional[str], typer.Option("--family", help="Only what works with this family (sdxl, sd3, flux).")] = None,
    json_: Json = False, debug: Debug = False,
) -> None:
    """The scheduler table: every name in A1111, ComfyUI, slug and diffusers spellings, and where it works."""
    from .families import get_family
    from .schedulers import scheduler_table

    allowed = None
    if preset:
        from .presets import load_preset

        p = load_preset(preset)
        family, allowed = p.family, set(p.schedulers)
    if family:
        family = get_family(family, where="--family").name
    rows = scheduler_table(family)
    if allowed:
        rows = [r for r in rows if r["sampler"] in allowed]
    if json_:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    _print_table(
        ["A1111 name", "ComfyUI", "slug", "diffusers class and kwargs", "families", "steps", "stochastic"],
        [[r["name"], r["comfyui"], r["slug"], r["diffusers"], ", ".join(r["families"]), str(r["steps"]),
          "yes" if r["stochastic"] else ""]
         for r in rows],
    )


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A Rich table on a terminal; plain aligned columns when piped, so grep and cut see whole values."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(*headers)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    for row in [headers, *rows]:
        sys.stdout.write("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() + "\n")


def main(argv: list[str] | None = None) -> int:
    """The entry point and the one error boundary: our errors become one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("IMAGEGEN_DEBUG") == "1"
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="imagegen", standalone_mode=False)
    except ImagegenError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        for detail in getattr(exc, "details", ()):  # e.g. every invalid line of a prompt file, one per line
            sys.stderr.write(f"{detail}\n")
        label = "imagegen: " if exc.exit_code == 130 else "imagegen: error: "
        sys.stderr.write(f"{label}{exc}\n")
        return exc.exit_code
    except typer.exceptions.TyperException as exc:  # Typer's (vendored click's) usage errors
        if debug:
            import traceback

            traceback.print_exc()
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        known = argv[0] in getattr(command, "commands", {}) if argv else False
        hint = f" (see: imagegen {argv[0]} --help)" if known else " (see: imagegen --help)"
        sys.stderr.write(f"imagegen: error: {message}{hint}\n")
        return getattr(exc, "exit_code", 2)
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("imagegen: interrupted\n")
        return 130
    return code if isinstance(code, int) else 0
