"""The Typer application the commands register on (imagegen.cli.main runs it)."""

import typer

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
