"""imagegen's own exceptions, each a one-line message for the user with its exit code; the CLI's error boundary
(imagegen.cli.main) prints them. Anything else is a bug and keeps its traceback."""

from __future__ import annotations


class ImagegenError(Exception):
    """Base of imagegen's own errors: a one-line message meant for the user."""

    exit_code = 1


class UsageError(ImagegenError):
    """Bad input from the user (flag, preset, file, value): shown as one line, exit code 2."""

    exit_code = 2


class RunError(ImagegenError):
    """The request was valid but could not be carried out (model missing, out of memory): exit code 1."""

    exit_code = 1


class OutOfMemory(RunError):
    """The device ran out of memory for one pipeline call (a batch retries it with fewer images)."""


class WorkerError(ImagegenError):
    """An error a batch worker on another process or machine (a Ray actor) sent back: its one line, naming the
    worker's host, with the exit code it would have had here; `remote_traceback` is shown with --debug."""

    def __init__(self, message: str, exit_code: int = 1, remote_traceback: str = ""):
        super().__init__(message)
        self.exit_code = exit_code
        self.remote_traceback = remote_traceback


class JobsFailed(ImagegenError):
    """A batch finished but some of its jobs failed (each recorded in the manifest): exit code 3."""

    exit_code = 3


class Interrupted(ImagegenError):
    """Stopped by Ctrl-C after writing what was done; the message says how to resume: exit code 130."""

    exit_code = 130


class InvalidLines(UsageError):
    """Some prompt-file lines are invalid: `details` holds one 'file:line: message' each, printed before the summary."""

    def __init__(self, message: str, details: list[str]):
        super().__init__(message)
        self.details = details


class VerifyError(ImagegenError):
    """`reproduce --verify` found a different image: exit code 4."""

    exit_code = 4


def first_line(exc: BaseException, default: str = "") -> str:
    """The first line of an exception's message (`default` when it has none): how a library's error joins ours."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else default


def closest(name: str, choices) -> str:
    """A ' (did you mean X?)' suffix for the closest choice, or ''."""
    import difflib

    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[match[0]]!r}?)" if match else ""
