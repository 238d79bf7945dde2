"""The generating commands: txt2img, batch, compare and reproduce. Each builds a request layer from its flags, calls the
core once, and renders the result; their options come from the field table (cli/options.py)."""

import json
import sys
from typing import Annotated, Optional

import typer

from .app import app
from .options import GENERATION, Debug, Json, Quiet, flags, mode_fields, with_fields


def _progress(quiet: bool):
    from ..progress import NullProgress, RichProgress

    return NullProgress() if quiet else RichProgress()


def _batch_progress(quiet: bool):
    from ..progress import NullBatchProgress, RichBatchProgress

    return NullBatchProgress() if quiet else RichBatchProgress()


def _emit(result, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")


def _batch_size(value: str) -> int | None:
    """--batch-size as the runners take it: an integer, or None for auto."""
    from ..errors import UsageError
    from ..request import PARSERS

    if value.strip().lower() == "auto":
        return None
    try:
        return PARSERS["batch_size"](value)
    except ValueError as exc:
        raise UsageError(f"--batch-size: {exc}, or auto") from None


_SINGLE = {
    "batch_size": {"help": "Images per pipeline call, or auto (by device and latent size, as batch picks). Results do "
                           "not depend on it. Default: 1", "metavar": "INT|auto"},
}


def _generate(mode: str, prompt: str, quiet: bool, json_: bool, fields: dict) -> None:
    """The one implementation of txt2img, img2img, inpaint and edit: a request layer, resolved for the mode, then run."""
    from ..generate import run
    from ..resolve import check_companions, resolve

    size = fields.pop("batch_size")
    auto = size is not None and _batch_size(size) is None
    layer = flags({**fields, "prompt": prompt, "batch_size": None if auto else size})
    check_companions(layer)
    _emit(run(resolve(layer, mode=mode), progress=_progress(quiet), auto_batch=auto), json_)


@app.command()
@with_fields(mode_fields("txt2img"), **_SINGLE)
def txt2img(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="What to draw.")],
    quiet: Quiet = False, json_: Json = False, debug: Debug = False, **fields,
) -> None:
    """Generate images from a text prompt (optionally steered by ControlNets and an IP-Adapter, refined by --hires)."""
    _generate("txt2img", prompt, quiet, json_, fields)


@app.command()
@with_fields(mode_fields("img2img"), **_SINGLE)
def img2img(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="What the picture should become.")],
    quiet: Quiet = False, json_: Json = False, debug: Debug = False, **fields,
) -> None:
    """Redraw an init image (--image) toward a prompt; --strength says how far it may go."""
    _generate("img2img", prompt, quiet, json_, fields)


@app.command()
@with_fields(mode_fields("inpaint"), **_SINGLE)
def inpaint(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="What to paint in the masked area.")],
    quiet: Quiet = False, json_: Json = False, debug: Debug = False, **fields,
) -> None:
    """Repaint the white area of --mask in --image, or outpaint with --extend; the rest keeps its pixels."""
    _generate("inpaint", prompt, quiet, json_, fields)


@app.command()
@with_fields(mode_fields("edit"), **_SINGLE)
def edit(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="The instruction: what to change, what to keep.")],
    quiet: Quiet = False, json_: Json = False, debug: Debug = False, **fields,
) -> None:
    """Edit --image by an instruction (repeat --image for several references, where the model takes them), on a
    preset that edits (imagegen presets list shows them)."""
    _generate("edit", prompt, quiet, json_, fields)


_BATCH = {
    "seed": {"help": "The run's base seed: a line without a seed gets one derived from it and the line's job index. "
                     "Default: random, kept in the manifest so a rerun makes the same images."},
    "n": {"help": "Images per line (a line's n beats it)."},
    "batch_size": {"help": "Images per pipeline call; auto picks by device and latent size. Results do not depend on "
                           "it.", "default": "auto", "metavar": "INT|auto"},
    "out": {"help": "Output folder; a rerun with the same folder resumes. Default: ./outputs"},
    "name": {"help": "File-name template (see txt2img --help); {index} is the image's number in the batch. Default: "
                     "{index:05d}-{seed}-{prompt}"},
}


@app.command()
@with_fields(GENERATION, **_BATCH)
def batch(
    file: Annotated[str, typer.Argument(metavar="FILE", help="Prompt file: .txt (one prompt a line), .jsonl or .csv (per-line fields); - reads stdin.")],
    format_: Annotated[Optional[str], typer.Option("--format", metavar="TEXT", help="Prompt-file format when the name does not say: txt, jsonl, csv.", rich_help_panel="Batch")] = None,
    expand: Annotated[bool, typer.Option("--expand", metavar="", help="Expand {a|b|c} alternatives into one job per combination.", rich_help_panel="Batch")] = False,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", metavar="", help="Run the valid lines even if some are invalid (each is reported).", rich_help_panel="Batch")] = False,
    restart: Annotated[bool, typer.Option("--restart", metavar="", help="Start over in a new folder (OUT-2, OUT-3, ...) instead of resuming; nothing is overwritten.", rich_help_panel="Batch")] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", metavar="", help="Stop at the first failed job (default: record it and go on; exit code 3).", rich_help_panel="Batch")] = False,
    max_images: Annotated[Optional[int], typer.Option("--max-images", min=1, metavar="INT", help="Refuse a batch that would make more images than this, before planning them (default 100000; a plan holds every image before any is made).", rich_help_panel="Batch")] = None,
    engine: Annotated[Optional[str], typer.Option("--engine", metavar="TEXT", help="Where the images are made: local (this process), accelerate (the processes of `accelerate launch`), ray (Ray workers on a local Ray or a cluster; pip install \"imagegen\\[ray]\"), or auto (the default: accelerate under a multi-process launcher, else local; IMAGEGEN_ENGINE overrides auto).", rich_help_panel="Batch")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", metavar="ADDRESS", help="--engine ray: the cluster to join (HOST:6379 of `ray start --head`, ray://HOST:10001, or auto for the one started on this machine). Default: RAY_ADDRESS, else a local Ray started for this batch.", rich_help_panel="Batch")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, metavar="INT", help="--engine ray: how many workers. Default: one per GPU of the cluster; on a cluster without GPUs, 1 (CPU workers share the CPUs).", rich_help_panel="Batch")] = None,
    quiet: Quiet = False, json_: Json = False, debug: Debug = False, **fields,
) -> None:
    """Generate every prompt of a file: validated first, resumable, crash-safe (flags are every line's defaults)."""
    from ..batch import BatchResult, get_engine, prepare, run_batch
    from ..errors import Interrupted, JobsFailed, UsageError
    from ..fields import parse_seed

    seed, batch_size = fields.pop("seed"), fields.pop("batch_size")
    try:
        base_seed = parse_seed(seed) if seed is not None else None
    except ValueError as exc:
        raise UsageError(f"--seed: {exc}") from None
    size_arg = _batch_size(batch_size)
    runner = get_engine(engine, ray_address=ray_address, workers=workers)
    limit = {"max_images": max_images} if max_images is not None else {}
    plan = prepare(file, flags(fields), base_seed=base_seed, fmt=format_, expand=expand, skip_invalid=skip_invalid,
                   restart=restart, engine=runner, **limit)
    result = run_batch(plan, batch_size=size_arg, fail_fast=fail_fast,
                       progress=_batch_progress(quiet), engine=runner)
    result = BatchResult.merge(runner.gather(result))  # under accelerate: one result for all processes
    if runner.rank == 0 and json_:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
    elif runner.rank == 0 and not quiet:
        _batch_summary(result)
    error = None
    if result.interrupted:
        error = Interrupted(
            f"interrupted: {result.done} new images written, {result.remaining} to go; run the same command again "
            f"(same file and --out {result.out_dir}) to resume"
        )
    elif result.failed:
        error = JobsFailed(
            f"{result.failed} image{'s' if result.failed != 1 else ''} failed (recorded in "
            f"{result.out_dir}/manifest.jsonl); a rerun retries them"
        )
    if error is not None and runner.rank > 0:
        raise typer.Exit(error.exit_code)  # the same exit code in every process; process 0 says why, once
    if error is not None:
        raise error


def _batch_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    where = f" ({result.world} processes)" if result.world > 1 else ""
    if result.workers:
        where = f" ({result.engine}, {len(result.workers)} workers)"
    table = Table(title=f"batch {result.out_dir}{where}")
    table.caption = "skipped: already done, verified by sha256"
    for column in ("done", "skipped", "failed", "invalid", "wall", "img/s", "batch size"):
        table.add_column(column, justify="right")
    table.add_row(
        str(result.done + result.adopted), str(result.skipped), str(result.failed), str(result.invalid),
        f"{result.wall_s:.1f} s", f"{result.images_per_s:.2f}", result.batch_size,
    )
    console = Console(stderr=True)
    console.print(table)
    if result.workers:
        console.print(_workers_table(result))
    if result.compile_warmup_s is not None:
        console.print(f"compile warm-up: {result.compile_warmup_s:.1f} s", highlight=False)
    for failure in result.failures[:20]:
        console.print(f"[red]failed[/] line {failure['line']}: {failure['error']}", highlight=False, markup=False)


def _workers_table(result):
    """Per worker of a distributed engine: what it made, how fast while busy, and micro-batches lost with it."""
    from rich.table import Table

    table = Table(title="workers")
    table.caption = (f"{result.retries} micro-batch{'es' if result.retries != 1 else ''} retried on another worker; "
                     f"driver CPU {1000 * result.driver_cpu_s / max(1, result.done):.0f} ms per image written")
    for column in ("worker", "device", "images", "busy", "img/s", "lost"):
        table.add_column(column, justify="left" if column == "worker" else "right")
    for worker in result.workers:
        table.add_row(worker["worker"], worker["device"], str(worker["images"]), f"{worker['busy_s']:.1f} s",
                      f"{worker['images_per_s']:.2f}", str(worker["lost"]))
    return table


# The axes replace --scheduler, --steps, --cfg and --strength; every cell is one image, named by its axis values.
AXIS_FIELDS = ("scheduler", "steps", "cfg", "strength", "lora_scale")
COMPARED = tuple(name for name in GENERATION if name not in (*AXIS_FIELDS, "n", "batch_size", "name"))


@app.command()
@with_fields(COMPARED)
def compare(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="What to draw.")],
    schedulers: Annotated[Optional[str], typer.Option("--schedulers", metavar="TEXT", help="Scheduler axis: comma-separated names, e.g. 'Euler,DPM++ 2M Karras,UniPC'.")] = None,
    steps: Annotated[Optional[str], typer.Option("--steps", metavar="TEXT", help="Step axis: 8,15,30 or a range 10-50:10.")] = None,
    cfg: Annotated[Optional[str], typer.Option("--cfg", metavar="TEXT", help="CFG axis: 3,5,7 or a range 2-8:2.")] = None,
    strengths: Annotated[Optional[str], typer.Option("--strengths", metavar="TEXT", help="Denoising strength axis (with --image): 0.3,0.5,0.7 or a range 0.2-0.8:0.2.")] = None,
    lora_scales: Annotated[Optional[str], typer.Option("--lora-scales", metavar="TEXT", help="LoRA scale axis (every LoRA of the request at each): 0,0.5,1 or a range 0-1:0.25.")] = None,
    quantizations: Annotated[Optional[str], typer.Option("--quantizations", metavar="TEXT", help="Quantization axis: none,int8,fp8 (each cell loads the model its way; measured against none).")] = None,
    caches: Annotated[Optional[str], typer.Option("--caches", metavar="TEXT", help="Denoiser cache axis: none,fbcache:0.05,fbcache:0.12,taylorseer (measured against none).")] = None,
    attentions: Annotated[Optional[str], typer.Option("--attentions", metavar="TEXT", help="Attention backend axis: auto,native,flash,sage (measured against auto).")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", metavar="TEXT", help="Seed axis: 1,2,3 or a range 1-4.")] = None,
    reference: Annotated[Optional[str], typer.Option("--reference", metavar="SCHEDULER:STEPS", help="The cell every other is measured against; one not on the grid is computed as an extra image. Default: the same scheduler at the largest step count.")] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", metavar="FLOAT", help="Mean absolute pixel difference (0-255) from the reference still counted as converged.")] = 2.0,
    max_images: Annotated[Optional[int], typer.Option("--max-images", metavar="N", help="Refuse a comparison of more than N images (counted from the axes before anything runs). Default: 1000.")] = None,
    quiet: Quiet = False, json_: Json = False, debug: Debug = False, **fields,
) -> None:
    """Compare schedulers, step counts, CFG scales, strengths, LoRA scales, quantizations, caches, attention backends
    and seeds on one prompt: a labelled grid, a table and an answer (each cell's mean pixel difference and PSNR from
    its reference)."""
    from ..compare import plan_compare, run_compare
    from ..resolve import check_companions

    layer = flags(fields)
    check_companions(layer)
    plan = plan_compare(prompt, layer, schedulers=schedulers, steps=steps, cfg=cfg, seeds=seeds, strengths=strengths,
                        lora_scales=lora_scales, quantizations=quantizations, caches=caches, attentions=attentions,
                        reference=reference, tolerance=tolerance, max_images=max_images)
    progress = _batch_progress(quiet)
    for note in plan.notes:
        progress.note(note)
    result = run_compare(plan, progress=progress)
    if json_:
        from ..compare.report import summary_json

        sys.stdout.write(summary_json(result) + "\n")
    elif not quiet:
        _compare_table(result)


def _compare_table(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..compare.report import rows

    from rich import box

    table = Table(title=f"compare {result.out_dir}", box=box.SIMPLE_HEAD)  # no column rules: fits 80 columns
    table.add_column("scheduler", justify="right", min_width=10)  # the one column that wraps at 80 columns
    shown = [c for c in ("strength", "lora_scale") if any(r[c] is not None for r in rows(result))]
    shown += [c for c in ("quantize", "cache", "attention") if len({r[c] for r in rows(result)}) > 1]
    for column in ("steps", "cfg", *[c.replace("_", " ") for c in shown], "seed", "evals", "time s", "Δ ref", "PSNR dB"):
        table.add_column(column, justify="right", no_wrap=True)  # a number cut to "382794…" would lose its meaning
    for r in rows(result):
        psnr = "" if r["psnr_db"] is None else "∞" if r["psnr_db"] == "inf" else str(r["psnr_db"])
        scheduler = r["scheduler"] + (" (reference)" if r["role"] == "reference" else "")
        table.add_row(scheduler, str(r["steps"]), f"{r['cfg']:g}", *[f"{r[c]:g}" if isinstance(r[c], float) else str(r[c]) for c in shown],
                      str(r["seed"]), str(r["model_steps"]),
                      f"{r['wall_s']:.2f}",
                      "" if r["mean_abs_diff"] is None else f"{r['mean_abs_diff']:.2f}", psnr)
    console = Console(stderr=True)
    console.print(table)
    console.print(result.answer, highlight=False, markup=False)
    console.print("grid: " + ", ".join(str(p) for p in result.grids), highlight=False, markup=False)


# A recipe is replayed whole; these flags override single fields of it.
REPLAYED = ("negative", "seed", "steps", "cfg", "guidance", "size", "scheduler", "preset", "model", "revision",
            "controlnet_model", "ip_adapter_model", "image_encoder", "dtype", "device", "out", "name", "metadata")
_REPRODUCE = {
    "seed": {"help": "Seed. Default: the recorded one."},
    "out": {"help": "Output folder. Default: a new folder beside the source, <name>.reproduced"},
    "model": {"help": "The model: a folder (one moved or renamed since; its sha256 must match the recorded one for "
                      "--verify), hub repo id or builtin:demo. Default: the recorded one. A PNG with only A1111 "
                      "parameters needs --model or --preset."},
    "preset": {"help": "Preset name or .toml path. Default: the recorded one."},
    "metadata": {"help": "portable, full or none, as for txt2img. Default: portable"},
}


@app.command()
@with_fields(REPLAYED, **_REPRODUCE)
def reproduce(
    source: Annotated[str, typer.Argument(metavar="FILE", help="An imagegen PNG or its .json sidecar, or a PNG with A1111 parameters (with --model or --preset).")],
    verify: Annotated[bool, typer.Option("--verify", metavar="", help="Compare with the original; exit 4 if any pixel differs.")] = False,
    quiet: Quiet = False, json_: Json = False, debug: Debug = False, **fields,
) -> None:
    """Re-run an image's recorded recipe (flags override fields) into a new folder beside it."""
    from ..reproduce import reproduce as do_reproduce

    progress = _progress(quiet)
    result = do_reproduce(source, verify=verify, overrides=flags(fields), progress=progress)
    if result.verification and not quiet:
        v = result.verification
        progress.console.print(f"[green]verified[/]: identical pixels (max pixel difference {v.max_pixel_diff})")
    _emit(result, json_)
