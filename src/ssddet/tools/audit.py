"""`ssddet audit`: every annotation ranked by how likely it is wrong (misplaced box, wrong class, no object), and
the objects each image likely misses (the work: engine/audit.py, engine/audit_kinds.py)."""
from __future__ import annotations

from .options import add_dataset_options, add_on_bad_image_option


def add_audit_parser(sub) -> None:
    p = sub.add_parser("audit", help="rank every annotation by how likely it is wrong (misplaced box, wrong class, "
                       "no object; SSD-Det refiner and detector) and list likely missing objects: CSV, optional HTML "
                       "with thumbnails")
    p.add_argument("--checkpoint", required=True, metavar="PT", help="an SSD-Det run's checkpoint.pt (holds the "
                   "refiner)")
    add_dataset_options(p, "the annotations to audit (COCO)", required=True)
    p.add_argument("--split", help="only the images of this split")
    p.add_argument("--out", required=True, metavar="CSV", help="ranked annotations, worst first, then the likely "
                   "missing objects (column `kind`)")
    p.add_argument("--html", metavar="HTML", help="also a self-contained HTML page of the most likely findings of "
                   "each kind with thumbnails and a filter by kind")
    p.add_argument("--html-top", type=int, default=200, help="rows of each kind in the HTML page (default: 200)")
    p.add_argument("--missing-score", type=float, default=0.5, metavar="S", help="a detection of the run's "
                   "detector with score >= S that overlaps no annotation (IoU < 0.5) is a likely missing object "
                   "(default: 0.5)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    add_on_bad_image_option(p, "its annotations are left out of the ranking")


def cmd_audit(a) -> int:
    from ..api import audit

    rep = audit(a.checkpoint, a.ann, data=a.data, images=a.images, split=a.split, out=a.out, html=a.html,
                html_top=a.html_top, device=a.device, on_bad_image=a.on_bad_image,
                missing_score=a.missing_score)
    print(f"{rep}\nwrote {a.out}" + (f" and {a.html}" if a.html else ""))
    return 0
