"""Command-line options made from the request field table: each field's flag, help and metavar are declared once
(imagegen.fields and each adapter's fields), and a command lists the fields it takes. Typer reads the generated
signature; the command receives the values as keyword arguments."""

import inspect
import re
from typing import Annotated, Any, Callable, Optional

import typer

from ..adapters import ADAPTERS
from ..families import cfg_help_text
from ..fields import OUTPUT
from ..modes import get_mode
from ..request import FIELDS, Request

Quiet = Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress or notes on stderr.", rich_help_panel=OUTPUT)]
Json = Annotated[bool, typer.Option("--json", metavar="", help="Print one JSON result on stdout.", rich_help_panel=OUTPUT)]
Debug = Annotated[bool, typer.Option("--debug", metavar="", help="Show tracebacks for errors.", rich_help_panel=OUTPUT)]

# What each group of commands takes: every generating field, minus what a command handles its own way.
GENERATION = tuple(name for name in FIELDS if name != "prompt")


def mode_fields(mode: str) -> tuple[str, ...]:
    """The fields a single-mode command takes: every generating field but those its mode refuses (and, for a part
    whose first field it refuses, all of that part's)."""
    refused = set(get_mode(mode).refuses)
    refused |= {f.name for a in ADAPTERS if a.fields and a.fields[0].name in refused for f in a.fields}
    return tuple(name for name in GENERATION if name not in refused)


HELP = {"cfg": FIELDS["cfg"].help + " " + cfg_help_text() + "."}
PRESET_DEFAULT = "Default: the preset's (imagegen presets show NAME)."
# An adapter's options share one panel named after it: its `panel`, else its class name (IPAdapter -> IP-Adapter).
ADAPTER_PANELS = {f.name: getattr(a, "panel", None) or re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "-", type(a).__name__)
                  for a in ADAPTERS for f in a.fields}


def field_help(name: str) -> str:
    """A field's option help; a field a preset may set says that the preset gives its default."""
    text = HELP.get(name) or FIELDS[name].help
    return f"{text} {PRESET_DEFAULT}" if FIELDS[name].preset else text


def option(name: str, *, help: str | None = None, default: Any = None, metavar: str | None = None) -> inspect.Parameter:
    """The Typer option of one request field (None means "not given": lower layers decide)."""
    field = FIELDS[name]
    kind = Optional[list[str]] if field.repeat else Optional[str]
    if default is not None:
        kind = str
    text = (help or field_help(name)).replace("[", "\\[")  # Rich markup: a [table] in help stays literal
    info = typer.Option(*field.options, help=text, metavar=metavar or field.metavar or "TEXT",
                        rich_help_panel=field.panel or ADAPTER_PANELS.get(name))
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, info])


def with_fields(names: tuple[str, ...], **overrides: dict) -> Callable:
    """Give a command one option per named field (overrides: field name -> option() arguments); the values reach it
    as keyword arguments, after its own parameters."""

    def decorate(func: Callable) -> Callable:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        taken = {p.name for p in own}
        generated = [option(name, **overrides.get(name, {})) for name in names if name not in taken]
        head = [p for p in own if p.default is inspect.Parameter.empty]
        tail = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.default is not inspect.Parameter.empty]
        # --help lists panels in order of first use: the command's own options first, Output last.
        options = sorted([*tail, *generated], key=lambda p: _panel(p) == OUTPUT)

        def command(**values):
            return func(**values)

        command.__name__, command.__doc__, command.__module__ = func.__name__, func.__doc__, func.__module__
        command.__signature__ = inspect.Signature(head + options)
        command.fields = tuple(p.name for p in generated)  # for the test that options match the field table
        return command

    return decorate


def _panel(param: inspect.Parameter) -> str | None:
    """The --help panel of a generated or declared option."""
    info = next(iter(getattr(param.annotation, "__metadata__", ())), None)
    return getattr(info, "rich_help_panel", None)


def with_bare_values(argv: list[str]) -> list[str]:
    """An option that may be given alone (`--compile`, a field with `bare`) gets its bare value where the next word
    is not one of its values: the end, another option, or a word that cannot be one (a prompt, a file name).
    Typer has no optional-value options, so the words are completed before it parses them."""
    bare = {flag: field for field in FIELDS.values() if field.bare for flag in field.options}
    out: list[str] = []
    for i, word in enumerate(argv):
        out.append(word)
        if word == "--":
            return out + argv[i + 1:]
        if word in bare:
            after = argv[i + 1] if i + 1 < len(argv) else None
            if after is None or after.startswith("-") or not re.fullmatch(r"[A-Za-z]{1,12}", after):
                out.append(bare[word].bare)  # a word like `ful` stays: its parser names the valid values
    return out


def flags(values: dict) -> Request:
    """The given flags as a request layer (an empty repeatable option is not given)."""
    given = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in values.items()
             if k in FIELDS and v not in (None, [], ())}
    return Request.from_mapping(given, where=None)
