"""The Typer application the commands register on (imagegen.cli.main runs it)."""

from typing import Annotated

import typer

from .. import __version__

app = typer.Typer(
    name="imagegen",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion SHELL (bash, zsh, fish, powershell)
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",  # for the option panels; help text escapes its [brackets]
)
presets_app = typer.Typer(help="List and show presets.", no_args_is_help=True)
app.add_typer(presets_app, name="presets")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"imagegen {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", metavar="", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Generate images with diffusers pipelines: presets, schedulers by any name, reproducible metadata."""


# One or two runnable examples per command, shown under its --help (added in imagegen.cli once all are registered).
EXAMPLES = {
    "txt2img": ['imagegen txt2img "a lighthouse at dusk" --preset sdxl -s "DPM++ 2M Karras" --seed 42 -n 4',
                'imagegen txt2img "a red circle on a blue background" --preset demo   (offline, CPU, seconds)',
                'imagegen txt2img "a castle" --preset sdxl --hires 1.5 --hires-strength 0.4   (hires fix)'],
    "img2img": ['imagegen img2img "the same scene at night" --image photo.png --strength 0.55 --preset sdxl'],
    "inpaint": ['imagegen inpaint "a red door" --image house.png --mask door-mask.png --preset sdxl',
                'imagegen inpaint "more beach" --image beach.png --extend 0,0,256,0 --preset flux-dev   (outpaint)'],
    "batch": ["imagegen batch prompts.txt --preset flux-schnell --out runs/catalog   (a rerun resumes)",
              "imagegen batch jobs.jsonl --preset sdxl -n 2 --batch-size auto --json"],
    "compare": ['imagegen compare "a fox" --preset sdxl --schedulers "Euler,UniPC" --steps 10,20,30'],
    "reproduce": ["imagegen reproduce outputs/0003-45.png --verify"],
    "schedulers": ["imagegen schedulers --preset sd3", "imagegen schedulers --family flux --json"],
    "list": ["imagegen presets list", "imagegen presets list --json"],
    "show": ["imagegen presets show sdxl"],
    # imagegen models (its `list` has its own, in cli/models.py: this `list` is the presets')
    "pull": ["imagegen models pull sdxl   (safetensors only, fp16, the components the pipeline reads)",
             "imagegen models pull sdxl --with-control --with-adapters",
             "imagegen models pull stabilityai/stable-diffusion-xl-base-1.0 --configs-only   (for single-file "
             "checkpoints offline)"],
    "verify": ["imagegen models verify", "imagegen models verify sdxl"],
    "rm": ["imagegen models rm sd3 --yes", "imagegen models rm stabilityai/stable-diffusion-3-medium-diffusers@main"],
    "plan": ["imagegen plan --preset flux-dev --vram 12",
             "imagegen plan --model ./some.safetensors --size 1024x1024 --batch-size 2 --vram 24 --json"],
    "info": ["imagegen models info sdxl", "imagegen models info ~/models/juggernaut.safetensors --json"],
}


def add_examples(typer_app: typer.Typer = app) -> None:
    """Give every registered command without an epilog its examples, one a line."""
    for info in typer_app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        if info.epilog is None and name in EXAMPLES:
            # Rich help joins the lines of a paragraph: a blank line between examples keeps one a line.
            info.epilog = "\n\n".join(["Examples:", *(f"  {e}" for e in EXAMPLES[name])]).replace("[", "\\[")
    for group in typer_app.registered_groups:
        add_examples(group.typer_instance)
