"""What a comparison run leaves behind: grid PNGs with readable labels, results.csv/json and a self-contained report."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path

from ..output import first_free, slug, write_new, write_new_bytes
from .plan import fmt, lora_scale_of, strength_of

COLUMNS = ("scheduler", "steps", "cfg", "strength", "lora_scale", "quantize", "cache", "attention", "seed", "wall_s", "denoise_s", "s_per_step", "model_steps", "reference",
           "mean_abs_diff", "psnr_db", "role", "file")


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's scalable built-in font
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def rows(result) -> list[dict]:
    out = []
    for c in result.cells:
        req = c.cell.req
        out.append({
            "scheduler": req.scheduler.name, "steps": req.steps, "cfg": req.cfg, "strength": strength_of(req),
            "lora_scale": lora_scale_of(req), "quantize": req.quantize, "cache": req.cache, "attention": req.attention,
            "seed": req.seed,
            "wall_s": round(c.wall_s, 4), "denoise_s": round(c.denoise_s, 4), "s_per_step": round(c.s_per_step, 5),
            "model_steps": c.model_steps, "reference": c.reference,
            "mean_abs_diff": None if c.mad is None else round(c.mad, 4),
            "psnr_db": None if c.psnr is None else (round(c.psnr, 3) if math.isfinite(c.psnr) else "inf"),
            "role": "reference" if c.cell.extra else "grid",  # an off-grid --reference is an extra image
            "file": c.path.relative_to(result.out_dir).as_posix() if c.path else None,
        })
    return out


def grid_images(result) -> list:
    """One labelled grid per page value: row labels on the left, column labels on top, each cell's time below it."""
    from PIL import Image, ImageDraw

    plan = result.plan
    varying = plan.varying
    on_grid = [c for c in result.cells if not c.cell.extra]
    pages = sorted({c.cell.page for c in on_grid})
    first = on_grid[0].pixels
    h, w = first.shape[:2]
    scale = max(1, 256 // max(w, h))  # small images are enlarged (nearest) so a grid stays legible
    cw, ch = w * scale, h * scale
    font_size = 18
    font, small = _font(font_size), _font(14)
    row_axis = varying[0] if varying else "scheduler"
    col_axis = varying[1] if len(varying) > 1 else None
    row_values = plan.axes[row_axis]
    col_values = plan.axes[col_axis] if col_axis else (None,)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 16 + max(measure.textlength(f"{fmt(v)}", font=font) for v in row_values)
    top = 2 * font_size + 24
    caption = 20
    grids = []
    for page in pages:
        cells = [c for c in on_grid if c.cell.page == page]
        canvas = Image.new("RGB", (int(label_w + len(col_values) * (cw + 8) + 8),
                                   int(top + len(row_values) * (ch + caption + 8) + 8)), "white")
        draw = ImageDraw.Draw(canvas)
        title = result.plan.prompt if len(result.plan.prompt) < 90 else result.plan.prompt[:89] + "…"
        if len(varying) > 2:
            title = f"{varying[2]} {fmt(plan.axes[varying[2]][page])}: {title}"
        draw.text((8, 4), title, fill="black", font=small)
        axis_text = f"rows: {row_axis}" + (f"   columns: {col_axis}" if col_axis else "")
        draw.text((8, 4 + 18), axis_text, fill="#555555", font=small)
        for j, value in enumerate(col_values):
            if value is not None:
                draw.text((label_w + j * (cw + 8) + 8, top - font_size - 6), fmt(value), fill="black", font=font)
        for i, value in enumerate(row_values):
            y = top + i * (ch + caption + 8)
            draw.text((8, y + ch // 2 - font_size // 2), fmt(value), fill="black", font=font)
        for c in cells:
            x = int(label_w + c.cell.col * (cw + 8) + 8)
            y = int(top + c.cell.row * (ch + caption + 8))
            tile = Image.fromarray(c.pixels).resize((cw, ch), Image.NEAREST)
            canvas.paste(tile, (x, y))
            text = f"{c.wall_s:.2f} s" + (f"  diff {c.mad:.1f}" if c.mad is not None else "")
            draw.text((x, y + ch + 2), text, fill="#333333", font=small)
        grids.append(canvas)
    return grids


def write_reports(result) -> None:

    """Write the grids, results.csv, results.json and report.html into the run's own folder."""
    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    table = rows(result)
    grids = [_png_bytes(grid) for grid in grid_images(result)]  # encoded once: for the file and the HTML
    result.grids = []
    plan = result.plan
    for page, grid in enumerate(grids):
        # A grid per value of the third axis is named by that value: grid-seed-42.png, grid-cfg-3p5.png.
        name = "grid.png" if len(grids) == 1 else f"grid-{plan.varying[2]}-{value_slug(plan.axes[plan.varying[2]][page])}.png"
        path = _free(out / name)
        write_new_bytes(path, grid)  # atomic, never through a link, with the umask's mode
        result.grids.append(path)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(table)
    write_new_bytes(_free(out / "results.csv"), text.getvalue().encode())
    summary = {"prompt": result.plan.prompt, "tolerance": result.plan.tolerance, "answer": result.answer,
               "load_s": round(result.load_s, 4), "encode_s": round(result.encode_s, 4),
               "denoise_total_s": round(result.denoise_total_s, 4), "cells": table,
               "grids": [p.name for p in result.grids]}
    write_new(_free(out / "results.json"), summary)
    write_new_bytes(_free(out / "report.html"), _html(result, table, grids).encode())


def value_slug(value) -> str:
    """An axis value as a file-name part: 3.5 -> 3p5."""
    return slug(fmt(value).replace(".", "p"), 32)


def _free(path: Path) -> Path:
    """path, or path-2, path-3 ... if it exists: a second comparison into one folder never overwrites the first."""
    return first_free(path, lambda n: path.with_name(f"{path.stem}-{n}{path.suffix}"))


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _html(result, table: list[dict], grids: list[bytes]) -> str:
    images = [f'<img alt="grid" src="data:image/png;base64,{base64.b64encode(grid).decode()}">' for grid in grids]
    head = "<th>image</th>" + "".join(
        f"<th onclick=\"sortBy({i + 1})\">{html.escape(c)}</th>" for i, c in enumerate(COLUMNS))
    body = "".join("<tr>" + _thumb(r["file"]) + "".join(_td(r[c]) for c in COLUMNS) + "</tr>" for r in table)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>imagegen compare</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:right}}th{{cursor:pointer;background:#eee}}img{{max-width:100%}}
td img{{width:64px;image-rendering:pixelated}}</style></head>
<body><h1>imagegen compare</h1><p>{html.escape(result.plan.prompt)}</p>
<p><b>{html.escape(result.answer)}</b></p>{''.join(images)}
<table id="t"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<script>
function sortBy(col) {{
  const tbody = document.querySelector('#t tbody');
  const rows = Array.from(tbody.rows);
  const asc = tbody.dataset.col == col && tbody.dataset.dir != 'asc';
  rows.sort((a, b) => {{
    const x = a.cells[col].dataset.sort ?? a.cells[col].textContent;
    const y = b.cells[col].dataset.sort ?? b.cells[col].textContent;
    const nx = parseFloat(x), ny = parseFloat(y);
    const c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
    return asc ? c : -c;
  }});
  tbody.dataset.col = col; tbody.dataset.dir = asc ? 'asc' : 'desc';
  rows.forEach(r => tbody.appendChild(r));
}}
</script></body></html>
"""


def _td(value) -> str:
    """A table cell; numbers carry data-sort so that an infinite PSNR (shown as ∞) sorts above every finite one."""
    if value == "inf":
        return '<td data-sort="1e308">∞</td>'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td data-sort="{value!r}">{html.escape(fmt(value))}</td>'
    return f"<td>{html.escape('' if value is None else str(value))}</td>"


def _thumb(file: str | None) -> str:
    """The cell's image, small, linking to the full-size PNG beside the report."""
    if not file:
        return "<td></td>"
    src = html.escape(file, quote=True)
    return f'<td><a href="{src}"><img alt="{src}" src="{src}" loading="lazy"></a></td>'


def summary_json(result) -> str:
    return json.dumps({
        "answer": result.answer, "cells": rows(result), "grids": [str(p) for p in result.grids],
        "load_s": round(result.load_s, 4), "encode_s": round(result.encode_s, 4), "wall_s": round(result.wall_s, 4),
        "denoise_total_s": round(result.denoise_total_s, 4), "overhead": round(result.overhead, 4),
        "out_dir": str(result.out_dir),
    }, allow_nan=False)  # strict JSON: an infinite PSNR is the string "inf", never Infinity
