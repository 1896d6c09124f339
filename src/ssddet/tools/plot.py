"""`ssddet plot`: training curves of one or more runs from their log.jsonl, overlaid (the drawing: viz/plot.py)."""
from __future__ import annotations


def add_plot_parser(sub) -> None:
    p = sub.add_parser("plot", help="training curves of runs (losses, val AP/AP50, refined-box IoUs) as a PNG")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (each with log.jsonl); several "
                   "are overlaid, named after their directories")
    p.add_argument("--out", default="curves.png", metavar="PNG", help="output image (default: curves.png)")
    p.add_argument("--names", nargs="+", metavar="NAME", help="legend names of the runs (default: the shortest "
                   "distinct ends of their paths)")


def cmd_plot(a) -> int:
    from ..api import plot

    out = plot(a.runs, out=a.out, names=a.names)
    print(f"wrote {out}")
    return 0
