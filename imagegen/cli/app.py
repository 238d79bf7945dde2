"""The Typer application the commands register on (imagegen.cli.main runs it)."""

from typing import Annotated

import typer

from .. import __version__

app = typer.Typer(
    name="imagegen",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion SHELL (bash, zsh, fish, powershell)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
presets_app = typer.Typer(help="List and show presets.", no_args_is_help=True)
app.add_typer(presets_app, name="presets")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"imagegen {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Generate images with diffusers pipelines: presets, schedulers by any name, reproducible metadata."""

