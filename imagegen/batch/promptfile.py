"""Prompt files (.txt, .jsonl, .csv or stdin): parsed strictly, every bad line reported at once as file:line."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError, closest
from ..paths import MB, read_regular
from ..request import FIELDS, LINE_FIELDS, Request

FORMATS = ("txt", "jsonl", "csv")
MAX_FILE_MB = 256  # far beyond --max-images lines; a device or endless stream must not be read into memory
# What one line may set is the field table's `line` flag: run-wide settings (out, device, dtype, batch size,
# metadata) come from flags only. Fields naming files (`path`) are relative to the prompt file's folder.
_ALTERNATIVES = re.compile(r"\{([^{}]*\|[^{}]*)\}")


@dataclass(frozen=True)
class Job:
    """One prompt-file line (or one combination of its {a|b} alternatives) as a request layer."""

    index: int  # position among the file's jobs, 0-based; seeds derive from it
    line: int  # 1-based line number in the file
    request: Request


@dataclass(frozen=True)
class PromptFile:
    """The parsed file: its jobs and every problem found, each as 'file:line: message'."""

    source: str  # the path as given, or <stdin>
    format: str
    jobs: tuple[Job, ...]
    errors: tuple[str, ...] = field(default=())
    # Job indices held by invalid lines, so fixing a line later does not renumber (and reseed) the lines after it.
    reserved: tuple[int, ...] = field(default=())


def read_prompt_file(path: str, *, fmt: str | None = None, expand: bool = False, stdin=None,
                     max_jobs: int | None = None) -> PromptFile:
    """Read and validate a prompt file; never raises for bad lines (they are returned), only for an unusable file or
    more than max_jobs jobs (counted before any {a|b} combination is built)."""
    source = "<stdin>" if path == "-" else path
    text = _read_text(path, stdin)
    fmt = _format(path, fmt, text)
    errors: list[str] = []
    rows = {"txt": _txt_rows, "jsonl": _jsonl_rows, "csv": _csv_rows}[fmt](text, source, errors)
    layers = list(_layers(rows, path, source, errors))
    if max_jobs is not None:
        _check_count(layers, expand, max_jobs, source)
    jobs: list[Job] = []
    reserved: list[int] = []
    for line, layer in layers:
        if layer is None:
            reserved.append(len(jobs) + len(reserved))
            continue
        for variant in _expand(layer) if expand else [layer]:
            jobs.append(Job(index=len(jobs) + len(reserved), line=line, request=variant))
    if not jobs and not errors:
        errors.append(f"{source}: no prompts (every line is blank or a # comment)")
    return PromptFile(source=source, format=fmt, jobs=tuple(jobs), errors=tuple(errors), reserved=tuple(reserved))


def _layers(rows, path: str, source: str, errors: list[str]):
    """(line, request layer) per content line; the layer is None for an invalid line (its message is in errors)."""
    for line, data in rows:  # data is None for a line already reported as invalid
        layer = None
        if data is not None:
            try:
                layer = Request.from_mapping(data, where=f"{source}:{line}", allowed=set(LINE_FIELDS))
                layer = _rebase(layer, None if path == "-" else Path(path).expanduser().parent)
            except UsageError as exc:
                errors.append(str(exc))
            else:
                if not layer.prompt or not layer.prompt.strip():
                    errors.append(f"{source}:{line}: empty prompt")
                    layer = None
        yield line, layer


def _check_count(layers, expand: bool, max_jobs: int, source: str) -> None:
    """Refuse a file that makes more than max_jobs jobs, counting {a|b} combinations by arithmetic alone."""
    total = sum(_combinations(layer) if expand else 1 for _, layer in layers if layer is not None)
    if total > max_jobs:
        raise UsageError(f"{source}: makes {total:,} jobs{' with --expand' if expand else ''}, over the limit of "
                         f"{max_jobs:,} (--max-images N raises it)")


def _combinations(layer: Request) -> int:
    count = 1
    for text in (layer.prompt, layer.negative):
        for group in _ALTERNATIVES.findall(text or ""):
            count *= group.count("|") + 1
    return count


def _rebase(layer: Request, folder: Path | None) -> Request:
    """Make a line's relative file paths relative to the prompt file's folder (stdin: the working folder)."""
    if folder is None:
        return layer
    import os

    def rebased(value: str, image: bool = False) -> str:
        expanded = os.path.expanduser(value)
        if os.path.isabs(expanded) or value in ("-", "preset"):
            return value
        candidate = folder / expanded
        if image or value.startswith(".") or candidate.exists():
            return str(candidate)
        return value  # org/name: a hub repo id

    changes = {key: f.rebase(getattr(layer, key), rebased) for key, f in FIELDS.items()
               if f.path and getattr(layer, key) is not None}
    return Request(**{**layer.given(), **changes}) if changes else layer


def _read_text(path: str, stdin) -> str:
    if path == "-":
        stream = stdin if stdin is not None else sys.stdin
        data = stream.buffer.read(MAX_FILE_MB * MB + 1) if hasattr(stream, "buffer") else stream.read()
        if len(data) > MAX_FILE_MB * MB:
            raise UsageError(f"<stdin>: more than {MAX_FILE_MB} MB of prompts; split the file")
        where = "<stdin>"
    else:
        p = Path(path).expanduser()
        if p.is_dir():
            raise UsageError(f"{path}: is a folder, not a prompt file")
        try:
            data = read_regular(p, label=path, limit=MAX_FILE_MB * MB)
        except FileNotFoundError:
            raise UsageError(f"{path}: no such prompt file") from None
        except OSError as exc:
            raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
        where = path
    if isinstance(data, str):
        return data.lstrip("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UsageError(f"{where}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from None


def _format(path: str, fmt: str | None, text: str) -> str:
    if fmt:
        key = fmt.lower().lstrip(".")
        if key not in FORMATS:
            raise UsageError(f"--format {fmt}: unknown prompt-file format; valid: {', '.join(FORMATS)}")
        return key
    if path == "-":  # stdin: JSON lines if the first content line is an object, else one prompt a line
        first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
        return "jsonl" if first.startswith("{") else "txt"
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    if suffix in ("json", "ndjson"):
        return "jsonl"
    if suffix in ("", "text", "prompts", "lst", "list"):
        return "txt"
    raise UsageError(f"{path}: unknown prompt-file type '.{suffix}'; valid: .txt, .jsonl, .csv (or name one with --format)")


def _content_lines(text: str):
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped and not stripped.startswith("#"):
            yield number, raw


def _txt_rows(text: str, source: str, errors: list[str]):
    for number, raw in _content_lines(text):
        yield number, {"prompt": raw.strip()}


def _jsonl_rows(text: str, source: str, errors: list[str]):
    for number, raw in _content_lines(text):
        where = f"{source}:{number}"
        try:
            data = json.loads(raw, parse_constant=_no_constant)
        except ValueError as exc:
            errors.append(f"{where}: not valid JSON ({exc})")
            yield number, None
            continue
        except RecursionError:
            errors.append(f"{where}: not a prompt line (JSON nested too deeply)")
            yield number, None
            continue
        if not isinstance(data, dict):
            errors.append(f"{where}: must be a JSON object such as {{\"prompt\": \"a red fox\", \"steps\": 20}}")
            yield number, None
            continue
        problem = _json_type_problem(data, where) or (None if "prompt" in data else f"{where}: missing \"prompt\"")
        if problem:
            errors.append(problem)
            yield number, None
            continue
        yield number, data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


def _json_type_problem(data: dict, where: str) -> str | None:
    """JSON values must already have the right type: a quoted "30" for steps is a mistake worth naming."""
    for key, value in data.items():
        if key in FIELDS and key not in LINE_FIELDS:
            return (f"{where}: {key} is set for the whole run ({FIELDS[key].flag}"
                    + (" or a preset key" if FIELDS[key].preset else "") + "), not per line")
        if key not in LINE_FIELDS:
            return (f"{where}: unknown key {key!r}{closest(key, LINE_FIELDS)}; valid keys: "
                    f"{', '.join(sorted(LINE_FIELDS))}")
        f = FIELDS[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, f.json)):
            if value in f.literals:
                continue
            return f"{where}: {key} must be {f.type_words()}, got {json.dumps(value)}"
        if isinstance(value, list) and (bad := next((v for v in value if isinstance(v, bool) or not isinstance(
                v, f.item_types)), _NONE)) is not _NONE:
            return (f"{where}: {key} must be {f.type_words()}, and its list items "
                    f"{' or '.join(_WORDS[t] for t in f.item_types if not (t is int and float in f.item_types))}; "
                    f"got {json.dumps(bad)} in {json.dumps(value)}")
    return None


_NONE = object()
_WORDS = {str: "strings", int: "integers", float: "numbers"}


def _csv_rows(text: str, source: str, errors: list[str]):
    reader = csv.reader(io.StringIO(text, newline=""))
    header, header_line = None, 0
    try:
        while header is None:
            row = next(reader)
            if any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#"):
                header, header_line = [cell.strip().lower() for cell in row], reader.line_num
    except StopIteration:
        return
    except csv.Error as exc:
        errors.append(f"{source}:{reader.line_num}: bad CSV ({exc})")
        return
    unknown = [h for h in header if h not in LINE_FIELDS]
    if unknown or "prompt" not in header or len(set(header)) != len(header):
        if unknown:
            message = (f"unknown column {unknown[0]!r}{closest(unknown[0], LINE_FIELDS)}; valid columns: "
                       f"{', '.join(sorted(LINE_FIELDS))}")
        elif "prompt" not in header:
            message = "the header row needs a 'prompt' column"
        else:
            message = "a column name appears twice in the header row"
        errors.append(f"{source}:{header_line}: {message}")
        return
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            errors.append(f"{source}:{start}: bad CSV ({exc})")
            return
        number, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        if len(row) != len(header):
            errors.append(f"{source}:{number}: {len(row)} cells but the header has {len(header)} columns")
            yield number, None
            continue
        yield number, {key: cell.strip() for key, cell in zip(header, row) if cell.strip()}


def _expand(layer: Request) -> list[Request]:
    """Every combination of the {a|b|c} groups in the prompt and negative prompt, in reading order."""
    texts = {"prompt": layer.prompt, "negative": layer.negative}
    choices = {key: _alternatives(text) for key, text in texts.items() if text}
    keys = list(choices)
    out = []
    for combo in itertools.product(*(choices[k] for k in keys)):
        out.append(Request(**{**layer.given(), **dict(zip(keys, combo))}))
    return out


def _alternatives(text: str) -> list[str]:
    parts = _ALTERNATIVES.split(text)  # literal, group, literal, group, ...
    options = [[p] if i % 2 == 0 else [o.strip() for o in p.split("|")] for i, p in enumerate(parts)]
    return ["".join(pieces) for pieces in itertools.product(*options)]
