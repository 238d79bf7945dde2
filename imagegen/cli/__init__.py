"""The command line: a thin Typer layer (app.py) whose commands build a request, call the core once and render the
result (commands.py, listing.py), and the one error boundary (main)."""

import os
import sys
import warnings

import typer

from ..errors import ImagegenError
from ..quiet import quiet_backends
from . import commands, listing, models, plan  # noqa: F401  (the commands register themselves on the app)
from .app import add_examples, app
from .options import with_bare_values

add_examples()


def main(argv: list[str] | None = None) -> int:
    """The entry point and the one error boundary: our errors become one line and an exit code."""
    argv = with_bare_values(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in argv or os.environ.get("IMAGEGEN_DEBUG") == "1"
    command = typer.main.get_command(app)
    with warnings.catch_warnings():
        if not debug:
            quiet_backends()  # before anything imports diffusers (a family's rule may, while resolving)
            _one_line_warnings(quiet=bool({"-q", "--quiet"} & set(argv)))
        return _run(command, argv, debug)


def _one_line_warnings(*, quiet: bool) -> None:
    """Libraries' warnings (torchsde's rounding notice, PIL's size warning) as one note line each, once; none with
    -q. Shown in full with --debug."""
    if quiet:
        warnings.simplefilter("ignore")
        return
    seen: set[str] = set()  # the filters stay Python's (deprecation warnings hidden); a text shows once

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if text not in seen:
            seen.add(text)
            sys.stderr.write(f"note: {category.__name__}: {text}\n")

    warnings.showwarning = show


def _one_line(message) -> str:
    """A message on one line, whatever a library's text it quotes held (newlines, tabs)."""
    return " ".join(str(message).split())


def _run(command, argv: list[str], debug: bool) -> int:
    try:
        code = command.main(args=argv, prog_name="imagegen", standalone_mode=False)
    except ImagegenError as exc:
        if debug:
            import traceback

            traceback.print_exc()
            sys.stderr.write(getattr(exc, "remote_traceback", ""))  # where a worker's error really happened
        for detail in getattr(exc, "details", ()):  # e.g. every invalid line of a prompt file, one per line
            sys.stderr.write(f"{_one_line(detail)}\n")
        label = "imagegen: " if exc.exit_code == 130 else "imagegen: error: "
        sys.stderr.write(f"{label}{_one_line(exc)}\n")
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
    except SystemExit as exc:  # --show-completion, --install-completion and shell completion end with sys.exit
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("imagegen: interrupted\n")
        return 130
    return code if isinstance(code, int) else 0
