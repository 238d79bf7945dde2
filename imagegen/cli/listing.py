"""The listing commands: presets and schedulers. They import neither torch nor diffusers, so they answer at once."""

import json
import sys
from typing import Annotated, Optional

import typer

from .app import app, presets_app
from .options import Debug, Json


@presets_app.command("list")
def presets_list(json_: Json = False, debug: Debug = False) -> None:
    """List the built-in and user presets. A broken preset file is skipped and reported (one line each on stderr);
    the others are listed and the exit code stays 0."""
    from ..paths import builtin_presets_dir
    from ..presets import scan_presets

    presets, broken = scan_presets()
    for problem in broken:
        sys.stderr.write(f"imagegen: warning: skipped {problem}\n")
    if json_:
        sys.stdout.write(json.dumps([_preset_json(p) for p in presets]) + "\n")
        return
    builtin = builtin_presets_dir().resolve()
    rows = []
    for p in presets:
        d = p.defaults
        rows.append([
            p.name, p.family.name, p.model, str(d.steps), f"{d.cfg:g}", f"{d.size[0]}x{d.size[1]}", d.scheduler,
            "built-in" if p.source.resolve().parent == builtin else str(p.source),
        ])
    _print_table(["preset", "family", "model", "steps", "cfg", "size", "scheduler", "source"], rows)


@presets_app.command("show")
def presets_show(name: Annotated[str, typer.Argument(metavar="NAME", help="Preset name or .toml path.")], json_: Json = False,
                 debug: Debug = False) -> None:
    """Show one preset: its model, defaults, allowed schedulers, and its ControlNet and IP-Adapter tables."""
    from ..presets import load_preset

    data = _preset_json(load_preset(name))
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
    from ..modes import MODES
    from ..schedulers import SAMPLERS

    d = p.defaults.given()
    d["size"] = f"{d['size'][0]}x{d['size'][1]}"
    return {
        "name": p.name, "family": p.family.name, "model": p.model, "revision": p.revision, "variant": p.variant,
        "dtype": p.dtype, "description": p.description, "defaults": d,
        "schedulers": [SAMPLERS[s].a1111 for s in p.schedulers],
        "modes": {m.name: p.family.pipeline_class(m.task, p.pipelines.get(m.name)) for m in MODES.values() if p.can(m)},
        "source": str(p.source),
        **p.tables,  # [controlnet], [ip_adapter]: the adapters' defaults
    }


def _families() -> str:
    from ..families import FAMILIES

    return ", ".join(FAMILIES)


@app.command()
def schedulers(
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", metavar="TEXT", help="Only what works with this preset.")] = None,
    family: Annotated[Optional[str], typer.Option("--family", metavar="TEXT", help=f"Only what works with this family ({_families()}).")] = None,
    json_: Json = False, debug: Debug = False,
) -> None:
    """The scheduler table: every name in A1111, ComfyUI, slug and diffusers spellings, and where it works."""
    from ..families import get_family
    from ..schedulers import scheduler_table

    allowed, chosen = None, None
    if preset:
        from ..presets import load_preset

        p = load_preset(preset)
        chosen, allowed = p.family, set(p.schedulers)
    if family:
        chosen = get_family(family, where="--family")
    rows = scheduler_table(chosen)
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
