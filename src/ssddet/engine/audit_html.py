"""The HTML page of `ssddet audit`: one self-contained file (thumbnails inlined as PNG data, plain CSS and JS, no
external assets) with the most likely findings of each kind, a picture of each, and buttons that filter the table
by kind."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import torch

from ..viz.draw import CLEAN, EXTRA_COLOURS, NOISY, REFINED, draw_boxes, read_rgb, thumbnail
from .audit import KIND_SCORE, format_summary
from .audit_kinds import OK

DETECTED = EXTRA_COLOURS[0]  # a missing object's detection (amber)
KIND_ORDER = ("misplaced", "wrong_class", "spurious", "missing", OK)  # the table's and the buttons' order
KIND_HELP = {"misplaced": "1 - IoU(given, refined)", "wrong_class": "q / (p + q): best other class vs annotated",
             "spurious": "1 - foreground probability", "missing": "detection score", OK: "no score passes 0.5"}
STYLE = ("body{font-family:sans-serif} pre{white-space:pre-wrap}"
         "td,th{border-bottom:1px solid #ddd;padding:4px;text-align:left}"
         "button{margin:0 4px 8px 0;padding:4px 10px;border:1px solid #888;background:#f4f4f4;cursor:pointer}"
         "button.on{background:#333;color:#fff}")
SCRIPT = ("function show(k){document.querySelectorAll('#rows tr').forEach(function(tr){"
          "tr.style.display=(k==='all'||tr.dataset.kind===k)?'':'none';});"
          "document.querySelectorAll('button[data-k]').forEach(function(b){"
          "b.className=b.dataset.k===k?'on':'';});}")


def pick_rows(rows: list[dict], top: int) -> list[dict]:
    """The page's rows: the `top` most likely of each kind (by its kind rank; `ok` rows by rank), kinds in
    KIND_ORDER."""
    picked = []
    for kind in KIND_ORDER:
        of = sorted((r for r in rows if r["kind"] == kind),
                    key=lambda r: r["kind_rank"] if r["kind_rank"] is not None else r["rank"])
        picked += of[:top]
    return picked


def crop_thumbnail(image: torch.Tensor, layers: list[tuple[np.ndarray, tuple]], focus: np.ndarray,
                   frame: tuple[int, int], size: int = 160) -> str:
    """`layers` ((xyxy [N, 4] in the JSON's pixel frame of `frame` = (width, height), colour), drawn in order) on the
    image, cropped around the `focus` boxes ([F, 4]) with a margin -> base64 PNG data of at most size x size px."""
    h, w = image.shape[-2:]
    scale = np.array([w / frame[0], h / frame[1]] * 2)
    drawn = image
    for boxes, colour in layers:
        drawn = draw_boxes(drawn, np.asarray(boxes).reshape(-1, 4) * scale, colour, width=2)
    allb = np.asarray(focus).reshape(-1, 4) * scale
    x0, y0 = allb[:, :2].min(axis=0)
    x1, y1 = allb[:, 2:].max(axis=0)
    m = max(x1 - x0, y1 - y0, 16) * 0.4
    x0, y0 = int(max(0, x0 - m)), int(max(0, y0 - m))
    x1, y1 = int(min(w, x1 + m + 1)), int(min(h, y1 + m + 1))
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(thumbnail(drawn[:, y0:y1, x0:x1], size).permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def row_picture(image: torch.Tensor, row: dict, rec) -> str:
    """An annotation: its given (vermillion), refined (blue) and clean (green) boxes; a missing object: its detection
    (amber) among the image's given boxes."""
    frame = (rec.width, rec.height)
    if row["kind"] == "missing":
        return crop_thumbnail(image, [(rec.boxes, NOISY), (row["detected"], DETECTED)], row["detected"], frame)
    boxes = [(b, c) for b, c in ((row["clean"], CLEAN), (row["given"], NOISY), (row["refined"], REFINED))
             if b is not None]
    return crop_thumbnail(image, boxes, np.stack([b for b, _ in boxes]), frame)


def _num(v, digits: int = 3) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _or(v, blank: str = ""):
    return blank if v is None else v


def row_html(r: dict, png: str) -> str:
    cls = _num(r["wrong_class_score"]) + (f" ({html.escape(r['suggested_category'])})" if r["suggested_category"]
                                          else "")
    cells = [r["kind"].replace("_", " "), _or(r["kind_rank"]), _num(r[KIND_SCORE.get(r["kind"], "score")]),
             _num(r["score"]), cls, _num(r["spurious_score"]), _num(r["missing_score"]), _num(r["confidence"], 2),
             _num(r["iou_given_clean"], 2), html.escape(str(_or(r["annotation_id"]))),
             r["image_id"], html.escape(r["category"]), html.escape(Path(r["file_name"]).name)]
    tds = "".join(f"<td>{c}</td>" for c in cells)
    return f"<tr data-kind=\"{r['kind']}\">{tds}<td><img src=\"data:image/png;base64,{png}\"></td></tr>"


def buttons(summary: dict, shown: list[dict]) -> str:
    kinds = summary.get("kinds", {})
    out = [f"<button data-k='all' class='on' onclick=\"show('all')\">all ({len(shown)})</button>"]
    for k in KIND_ORDER:
        n_shown = sum(r["kind"] == k for r in shown)
        out.append(f"<button data-k='{k}' onclick=\"show('{k}')\" title='{html.escape(KIND_HELP[k])}'>"
                   f"{k.replace('_', ' ')} ({n_shown} of {kinds.get(k, n_shown)})</button>")
    return "".join(out)


def write_html(rows: list[dict], records, summary: dict, path: str | Path, top: int = 200) -> Path:
    """A self-contained page of the `top` most likely findings of each kind (and of the `ok` annotations), a picture
    of each, filtered by kind with buttons."""
    by_id = {r.image_id: r for r in records}
    shown = pick_rows(rows, top)
    cache: dict[str, torch.Tensor] = {}
    body = []
    for r in shown:
        if r["file_name"] not in cache:
            cache.clear()  # rows are not grouped by image: keep one decoded image, not all of them
            cache[r["file_name"]] = read_rgb(r["file_name"])
        body.append(row_html(r, row_picture(cache[r["file_name"]], r, by_id[r["image_id"]])))
    head = "".join(f"<th>{h}</th>" for h in (
        "kind", "kind rank", "kind score", "misplaced (1 - IoU)", "wrong class (suggested)", "spurious", "missing",
        "confidence", "IoU given/clean", "annotation", "image", "category", "file", "picture"))
    key = (f"<span style='color:rgb{NOISY}'>given</span>, <span style='color:rgb{REFINED}'>refined</span>, "
           f"<span style='color:rgb{CLEAN}'>clean</span>, <span style='color:rgb{DETECTED}'>detected (missing)"
           "</span>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ssddet audit</title><style>{STYLE}</style>"
            f"<script>{SCRIPT}</script></head><body><h2>ssddet audit: the most likely box errors of each kind</h2>"
            f"<pre>{html.escape(format_summary(summary))}</pre><p>Kinds: misplaced = 1 - IoU(given, refined); "
            "wrong class = q / (p + q), p the annotated class's probability, q the best other class's; spurious = "
            "1 - the detector's foreground probability on the given or refined box; missing = a confident "
            f"detection no annotation covers. Boxes: {key}. Up to {top} rows of each kind.</p>"
            f"<div>{buttons(summary, shown)}</div>"
            f"<table><thead><tr>{head}</tr></thead><tbody id='rows'>{''.join(body)}</tbody></table></body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
