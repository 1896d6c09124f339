"""Re-read on BCCD's val split the A/Bs that chose four SSD-Det defaults on the test split.

`ssddet.w_det` (1.0; released 4.0), SSD-Det's R-CNN ignore band (`model.box_bg_iou_thresh` 0.4; torchvision 0.5),
`ssddet.refiner_decay_epochs` (4; 0 = off) and `ssddet.trust_agreement` (0.68; 0 = off) were each kept for their
BCCD **test** AP. Every cell of `benchmarks/noise_sweep.py` also records `val_final` (AP on the val split, final
model), so those A/Bs can be read again on val without training anything.

The script reads every committed cell: the A/B summaries `benchmarks/results/ab/*.json` and their
`ab/NAME/cells/*.json`, the sweep's `sweep/cells/`, `sweep/superseded/` and `sweep.json`, in the working tree and
(unless `--no-history`) every version of those files in the git history of HEAD: the cells a re-run replaced,
which are the references several of these A/Bs were read against, live only there. It pairs runs by their
recorded `spec`, never by file name:

- a run's spec is taken as `noise_sweep.same_spec` takes it: another method's config section dropped, a field
  the run predates set to what the code then did (`noise_sweep.PREDATED_FIELDS`, plus `EXTRA_PREDATED` below),
  `on_bad_image` "stop" read as "skip" (a finished run met no unreadable image), and fields that change nothing
  in a sweep run replaced by what they decide (`noise_sweep.effect`, e.g. the refiner's decay points);
- runs with the same spec are replicates (the same cell run again, on another machine or commit) and are
  averaged within their seed; two records of one run (the same spec and bit-identical AP) count once;
- two specs form a pair for a field when they differ in that field and in nothing else (same noise, method,
  seed, schedule, everything), and the difference changes what the run trains;
- but not when they are one training run recorded under both specs (the same epoch log and wall time: a cell
  whose spec was rewritten later), which is reported instead.

One behaviour changed without a config field: from 4238c94 on, SSD-Det lifts its ignore band while the refiner
trusts the given boxes. A band run recorded before that, whose refiner did trust them in some epoch (so the two
codes differ), is told apart by its epoch trace (no `ignore_band` statistic) and its band value is shown as
"0.4 kept while trusted".

    python benchmarks/val_recheck.py            # writes benchmarks/results/val_recheck.json and .md
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "benchmarks/results"
SOURCES = (f"{RESULTS}/ab", f"{RESULTS}/sweep", f"{RESULTS}/sweep.json")
TODAY = f"{RESULTS}/sweep/cells"  # the sweep's current cells: today's defaults, and the seed spread of val AP


def _noise_sweep():
    if "noise_sweep" not in sys.modules:
        spec = importlib.util.spec_from_file_location("noise_sweep", ROOT / "benchmarks" / "noise_sweep.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["noise_sweep"] = mod  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(mod)
    return sys.modules["noise_sweep"]


# Fields some recorded SSD-Det specs predate that `noise_sweep.PREDATED_FIELDS` does not list (the sweep re-ran
# those cells instead): both were added as switches whose default is what the code did before.
EXTRA_PREDATED = {
    ("ssddet", "det_lr_steps"): None,  # the detector decayed at train.lr_steps (before 3789200)
    ("ssddet", "trunk_init"): "released",  # N(0, 0.01) trunk FCs (before 937c51a)
}
BAND = ("model", "box_bg_iou_thresh")
KEPT = "0.4 kept while trusted"  # the band before 4238c94, in a run whose refiner trusted the given boxes


@dataclass(frozen=True)
class Default:
    key: tuple[str, str]
    value: object  # today's default
    before: object  # the value it replaced (released code / torchvision / off)
    chosen: str  # how it was chosen, on test

    @property
    def name(self) -> str:
        return ".".join(self.key)


DEFAULTS = (
    Default(("ssddet", "w_det"), 1.0, 4.0,
            "released 4.0 → 1.0 on test AP, seed 0 at 0/20/40 % (`ab/wdet1_n0.0`, `ab/wdet1`, `ab/wdet1_n0.4`); "
            "0.5 not kept at 40 % (`ab/wdet05_n0.4`, two seeds)"),
    Default(BAND, 0.4, 0.5,
            "0.5 → 0.4 under SSD-Det on test AP, two seeds at 20/40 % (`ab/ignore04_n0.*`, `ab/ignore04_s1_n0.*`); "
            "at 0 % the band cost test AP (`ab/ignore04_s{0,1}_n0.0`), so it is lifted while the refiner trusts "
            "the given boxes (`ab/lift_s{0,1}_n0.0`)"),
    Default(("ssddet", "refiner_decay_epochs"), 4.0, 0.0,
            "0 → 4 on test AP, 40 %, 12 epochs, two seeds (`ab/refdecay4_e12_n0.4`); 0/20 % at 12 epochs ran with "
            "4 only (`ab/e12_n0.*`); no effect at the sweep's 6 epochs"),
    Default(("ssddet", "trust_agreement"), 0.68, 0.0,
            "0 → 0.68 on test AP at 0 %, seed 0 (0.467 → 0.516, `ab/trust68`); at 20/40 % it does not act"),
)


@dataclass
class Run:
    """One training run (a cell), possibly recorded in several files."""
    cell: dict
    spec: dict  # the canonical spec: foreign sections dropped, predated fields filled
    effect: str  # json of noise_sweep.effect(spec): what the run trains
    sources: list[str] = field(default_factory=list)
    fingerprints: set[str] = field(default_factory=set)  # of its records' epoch logs and wall times

    @property
    def noise(self) -> float:
        return float(self.cell["noise"])

    @property
    def seed(self) -> int:
        return int(self.cell["seed"])

    @property
    def epochs(self) -> int:
        return int(self.spec["train"]["epochs"])

    @property
    def val(self) -> float:
        return float(self.cell["val_final"]["AP"])

    @property
    def test(self) -> float | None:
        t = self.cell.get("test") or {}
        return float(t["AP"]) if "AP" in t else None


# ---------------------------------------------------------------------------------------------------- reading


def cells_of(doc) -> list[dict]:
    """The cells a results file holds: a summary's `cells` list, or one cell."""
    if isinstance(doc, dict) and isinstance(doc.get("cells"), list):
        return [c for c in doc["cells"] if isinstance(c, dict)]
    return [doc] if isinstance(doc, dict) and "spec" in doc and "cell" in doc else []


def tree_files(root: Path = ROOT) -> list[tuple[str, str]]:
    """(label, text) of every JSON under SOURCES in the working tree."""
    out = []
    for src in SOURCES:
        p = root / src
        for f in sorted([p] if p.is_file() else p.rglob("*.json") if p.is_dir() else []):
            out.append((f.relative_to(root).as_posix(), f.read_text()))
    return out


def history_files(root: Path = ROOT) -> list[tuple[str, str]]:
    """(label "path@commit", text) of every version of a JSON under SOURCES that HEAD's history wrote."""
    try:
        log = subprocess.run(["git", "-C", str(root), "log", "-m", "--format=C %H", "--raw", "--no-abbrev",
                              "--no-renames", "HEAD", "--", *SOURCES], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"[val_recheck] no git history read ({e}); working tree only", file=sys.stderr)
        return []
    blobs: dict[str, str] = {}
    commit = ""
    for line in log.stdout.splitlines():
        if line.startswith("C "):
            commit = line[2:]
        elif line.startswith(":"):
            meta, path = line.split("\t", 1)
            sha = meta.split()[3]
            if path.endswith(".json") and sha.strip("0"):
                blobs.setdefault(sha, f"{path}@{commit[:7]}")  # the newest commit that wrote this version
    if not blobs:
        return []
    cat = subprocess.run(["git", "-C", str(root), "cat-file", "--batch"], input=("\n".join(blobs) + "\n").encode(),
                         capture_output=True, check=True).stdout
    out, pos = [], 0
    for sha, label in blobs.items():
        header_end = cat.index(b"\n", pos)
        name, kind, size = cat[pos:header_end].decode().split()
        if name != sha or kind != "blob":
            raise RuntimeError(f"git cat-file: expected blob {sha}, got {name} {kind}")
        size = int(size)
        out.append((label, cat[header_end + 1:header_end + 1 + size].decode()))
        pos = header_end + 1 + size + 1  # git answers in input order: "<sha> blob <size>\n<content>\n"
    return out


def _floats(x):
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, list):
        return [_floats(v) for v in x]
    if isinstance(x, dict):
        return {k: _floats(v) for k, v in x.items()}
    return x


def canonical_spec(cell: dict) -> dict:
    """A cell's spec as it is compared (see the module docstring)."""
    ns = _noise_sweep()
    raw = cell.get("spec", {})
    method = raw.get("train", {}).get("method")
    spec = {sec: dict(v) for sec, v in raw.items()
            if isinstance(v, dict) and ns.METHOD_SECTIONS.get(sec, method) == method}
    for (sec, key), value in {**ns.PREDATED_FIELDS, **EXTRA_PREDATED}.items():
        if sec in spec and key not in spec[sec]:
            spec[sec][key] = value
    data = spec.get("data", {})
    if data.get("on_bad_image") == "stop":  # a finished run under "stop" met no unreadable image
        data["on_bad_image"] = "skip"
    if data.get("noise") is None and cell.get("noise") is not None:
        # the user path (the noise is in the training file), or a clean run from before `--noise 0` meant "the
        # given boxes are the clean ones" (the same training; only the IoU statistics were not logged)
        data["noise"] = float(cell["noise"])
    band = _floats(spec.get("model", {}).get(BAND[1]))
    epochs = cell.get("epochs") or []
    if (method == "ssddet" and isinstance(band, float) and band < 0.5 and epochs
            and not any("ignore_band" in e for e in epochs) and any(e.get("given_trusted", 0) > 0 for e in epochs)):
        spec["model"][BAND[1]] = KEPT
    return spec


def effect_of(spec: dict, data: str | None) -> str:
    return json.dumps(_floats(_noise_sweep().effect(spec, data)), sort_keys=True)  # 1 and 1.0 alike


def usable(cell: dict) -> bool:
    """An SSD-Det cell with a final val AP whose epoch trace fits its schedule (not one appended to)."""
    if cell.get("method") != "ssddet" or not (cell.get("val_final") or {}).get("AP"):
        return False
    planned = cell.get("spec", {}).get("train", {}).get("epochs")
    return planned is None or len(cell.get("epochs", [])) <= planned


def fingerprint(cell: dict) -> str:
    """A training run's identity apart from its spec: its per-epoch log and wall time (a re-run, even a bit-identical
    one, differs in wall time)."""
    return hashlib.sha1(json.dumps([cell.get("wall_s"), cell.get("epochs")], sort_keys=True).encode()).hexdigest()


def load_runs(files: list[tuple[str, str]], data: str | None) -> list[Run]:
    """Every usable SSD-Det run in `files`, each once (records of one run merged, their sources kept)."""
    runs: dict[tuple, Run] = {}
    for label, text in files:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            continue
        for cell in cells_of(doc):
            if not usable(cell):
                continue
            spec = canonical_spec(cell)
            eff = effect_of(spec, data)
            key = (eff, cell["val_final"]["AP"], (cell.get("test") or {}).get("AP"))
            run = runs.setdefault(key, Run(cell, spec, eff))
            if label not in run.sources:
                run.sources.append(label)
            run.fingerprints.add(fingerprint(cell))
    return list(runs.values())


# ---------------------------------------------------------------------------------------------------- pairing


def get(spec: dict, key: tuple[str, str]):
    return _floats(spec.get(key[0], {}).get(key[1]))


def differs_only_in(a: dict, b: dict, key: tuple[str, str], data: str | None = None) -> bool:
    """Whether specs `a` and `b` differ in `key` and in nothing else, and that difference changes the run."""
    if key[1] not in a.get(key[0], {}) or key[1] not in b.get(key[0], {}) or get(a, key) == get(b, key):
        return False
    same = json.loads(json.dumps(b))
    same[key[0]][key[1]] = a[key[0]][key[1]]
    return effect_of(a, data) == effect_of(same, data) and effect_of(a, data) != effect_of(b, data)


def replicate_groups(runs: list[Run]) -> list[list[Run]]:
    """Runs grouped by what they train (one group: one spec, run once or more)."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.effect, []).append(r)
    return list(groups.values())


def _candidates(runs: list[Run], key: tuple[str, str], data: str | None):
    groups = replicate_groups(runs)
    for i, ga in enumerate(groups):
        for gb in groups[i + 1:]:
            if differs_only_in(ga[0].spec, gb[0].spec, key, data):
                yield ga, gb


def _one_run(ga: list[Run], gb: list[Run]) -> bool:
    """Whether two groups hold the same training run recorded under two specs (the same epoch log and wall time)."""
    return bool(set().union(*(r.fingerprints for r in ga)) & set().union(*(r.fingerprints for r in gb)))


def find_pairs(runs: list[Run], key: tuple[str, str], data: str | None = None) -> list[tuple[list[Run], list[Run]]]:
    """Every pair of replicate groups whose specs differ only in `key` (and that are not one run recorded twice)."""
    return [(ga, gb) for ga, gb in _candidates(runs, key, data) if not _one_run(ga, gb)]


def relabelled(runs: list[Run], key: tuple[str, str], data: str | None = None) -> list[tuple[list[Run], list[Run]]]:
    """The would-be pairs for `key` that are one run recorded under both values: no A/B."""
    return [(ga, gb) for ga, gb in _candidates(runs, key, data) if _one_run(ga, gb)]


def _context(spec: dict, key: tuple[str, str]) -> str:
    """A comparison's shared settings: the spec without the field and the seed."""
    s = json.loads(json.dumps(spec))
    s[key[0]].pop(key[1], None)
    s["train"].pop("seed", None)
    return json.dumps(s, sort_keys=True)


def _order(d: Default, va, vb) -> bool:
    """Whether (va, vb) is already (A, B): A is today's default, else the value that is not the one replaced."""
    if va == d.value or vb == d.value:
        return va == d.value
    if va == d.before or vb == d.before:
        return vb == d.before
    return str(va) <= str(vb)


def comparisons(runs: list[Run], d: Default, data: str | None = None) -> list[dict]:
    """The pairs for default `d`, grouped over seeds into comparisons (one value against another, all else equal)."""
    grouped: dict[tuple, dict] = {}
    for ga, gb in find_pairs(runs, d.key, data):
        if not _order(d, get(ga[0].spec, d.key), get(gb[0].spec, d.key)):
            ga, gb = gb, ga
        k = (_context(ga[0].spec, d.key), get(ga[0].spec, d.key), get(gb[0].spec, d.key))
        comp = grouped.setdefault(k, {"a": get(ga[0].spec, d.key), "b": get(gb[0].spec, d.key),
                                      "noise": ga[0].noise, "epochs": ga[0].epochs, "spec_a": ga[0].spec,
                                      "seeds": {}})
        comp["seeds"][ga[0].seed] = (ga, gb)
    return [summarize(c) for c in sorted(grouped.values(), key=lambda c: (c["noise"], c["epochs"], str(c["b"])))]


# ---------------------------------------------------------------------------------------------------- summary


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _sd(xs):
    xs = [x for x in xs if x is not None]
    return statistics.stdev(xs) if len(xs) > 1 else None


def _run_record(r: Run) -> dict:
    tree = [s for s in r.sources if "@" not in s]
    return {"val": r.val, "test": r.test, "commit": r.cell.get("commit"), "cell": r.cell.get("cell"),
            "sources": tree + [s for s in r.sources if "@" in s]}


def summarize(c: dict) -> dict:
    seeds = sorted(c["seeds"])
    per = []
    for s in seeds:
        ga, gb = c["seeds"][s]
        per.append({"seed": s, "val_a": _mean(r.val for r in ga), "val_b": _mean(r.val for r in gb),
                    "test_a": _mean(r.test for r in ga), "test_b": _mean(r.test for r in gb),
                    "runs_a": [_run_record(r) for r in ga], "runs_b": [_run_record(r) for r in gb]})
    out = {k: c[k] for k in ("a", "b", "noise", "epochs")}
    out["spec_a"] = c["spec_a"]
    out["seeds"] = per
    for arm in ("val_a", "val_b", "test_a", "test_b"):
        out[arm] = _mean(p[arm] for p in per)
    out["val_delta"] = out["val_a"] - out["val_b"]
    out["test_delta"] = (out["test_a"] - out["test_b"]) if None not in (out["test_a"], out["test_b"]) else None
    sds = [x for x in (_sd(p["val_a"] for p in per), _sd(p["val_b"] for p in per)) if x is not None]
    out["seed_sd"] = max(sds) if sds else None
    out["seed_deltas"] = [p["val_a"] - p["val_b"] for p in per]
    return out


def sweep_sd(runs_today: list[Run], noise: float, epochs: int) -> float | None:
    """The sample SD over seeds of the val AP of today's sweep cells (SSD-Det) at this noise and schedule."""
    return _sd([r.val for r in runs_today if r.noise == noise and r.epochs == epochs])


def rerun_spread(runs: list[Run], noise: float, epochs: int) -> float | None:
    """The largest val AP range among runs of one spec and seed (replicates) at this noise and schedule."""
    ranges = [max(r.val for r in g) - min(r.val for r in g) for g in replicate_groups(runs)
              if len(g) > 1 and g[0].noise == noise and g[0].epochs == epochs]
    return max(ranges) if ranges else None


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _against(delta: float, sd: float) -> str:
    """Where a difference lies against a spread: "beyond", "within", or "at" (equal to 3 decimals)."""
    return "at" if abs(abs(delta) - sd) < 0.0005 else "beyond" if abs(delta) > sd else "within"


def verdict(c: dict) -> str:
    """Which value val prefers, and whether the difference exceeds the seed spread (see `markdown`)."""
    a, b, delta = _fmt(c["a"]), _fmt(c["b"]), c["val_delta"]
    pref = f"tie ({delta:+.3f})" if abs(delta) < 0.0005 else f"val prefers {a if delta > 0 else b} by {abs(delta):.3f}"
    if c["seed_sd"] is not None:
        agree = all(x > 0 for x in c["seed_deltas"]) or all(x < 0 for x in c["seed_deltas"])
        tail = (f"{_against(delta, c['seed_sd'])} the seed spread (SD {c['seed_sd']:.3f}); "
                + ("every seed agrees" if agree else "the seeds disagree"))
    elif c["ref_sd"] is not None:
        tail = f"one seed: {_against(delta, c['ref_sd'])} the sweep's seed SD on val ({c['ref_sd']:.3f})"
    else:
        tail = "one seed: no seed spread to compare with"
    if c.get("rerun") is not None:
        tail += f"; one spec re-run moved val by up to {c['rerun']:.3f} at this level"
    return f"{pref}, {tail}"


def context_label(spec_a: dict, d: Default, today: dict[tuple, dict]) -> str:
    """The comparison's shared settings against today's defaults at the same noise (and schedule)."""
    noise, epochs = spec_a["data"]["noise"], spec_a["train"]["epochs"]
    ref = today.get((noise, epochs)) or today.get((noise, 6))
    if ref is None:
        return "?"
    ignore = {d.key, ("train", "seed"), ("train", "epochs")}
    if epochs != ref["train"]["epochs"]:
        ignore.add(("refiner_schedule",))
    ea, er = json.loads(effect_of(spec_a, None)), json.loads(effect_of(ref, None))
    diffs = []
    for sec in sorted(set(ea) | set(er)):
        va, vr = ea.get(sec), er.get(sec)
        if not isinstance(va, dict) or not isinstance(vr, dict):
            if va != vr and (sec,) not in ignore:
                diffs.append(f"{sec}={va}")
            continue
        for k in sorted(set(va) | set(vr)):
            if (sec, k) not in ignore and va.get(k) != vr.get(k):
                diffs.append(f"{'band' if (sec, k) == BAND else k}={_fmt(va.get(k, '–'))}")
    return "today's defaults" if not diffs else "today's but " + ", ".join(diffs)


# ---------------------------------------------------------------------------------------------------- report


def report(runs: list[Run], runs_today: list[Run], data: str | None) -> dict:
    today = {(r.noise, r.epochs): r.spec for r in runs_today}
    levels = sorted({r.noise for r in runs_today})
    out, n = [], 0
    for d in DEFAULTS:
        comps = comparisons(runs, d, data)
        for c in comps:
            n += 1
            c["id"] = n
            c["context"] = context_label(c.pop("spec_a"), d, today)
            c["ref_sd"] = sweep_sd(runs_today, c["noise"], c["epochs"]) if c["seed_sd"] is None else None
            c["rerun"] = rerun_spread(runs, c["noise"], c["epochs"])
            c["verdict"] = verdict(c)
        twice = relabelled(runs, d.key, data)
        missing = []
        for level in levels:
            if not any(c["noise"] == level for c in comps):
                alone = [r for r in runs if r.noise == level and get(r.spec, d.key) == d.value]
                note = "no pair differing only in this field" + (
                    f" ({len(alone)} run(s) with {_fmt(d.value)}, none with another value and all else equal)"
                    if alone else "")
                for ga, gb in twice:
                    if ga[0].noise == level:
                        r = ga[0]
                        note += (f"; seed {r.seed} ({r.cell.get('commit')}) is one run recorded with both "
                                 f"{_fmt(get(ga[0].spec, d.key))} and {_fmt(get(gb[0].spec, d.key))} "
                                 "(the same epoch log and wall time): not an A/B")
                missing.append({"noise": level, "note": note})
        out.append({"default": d.name, "value": d.value, "before": d.before, "chosen_on_test": d.chosen,
                    "comparisons": comps, "no_pair": missing})
    return {"defaults": out, "runs_read": len(runs)}


def _num(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _short(source: str) -> str:
    return source.removeprefix(RESULTS + "/")


def markdown(rep: dict) -> str:
    lines = [
        "# SSD-Det defaults chosen on test, re-read on val",
        "",
        f"Written by `{rep['command']}` from {rep['runs_read']} SSD-Det runs (every committed cell: working tree "
        "and git history). In each row A and B differ in that field only (specs compared field by field; "
        "same noise, seed, schedule and everything else). AP: the final model's, BCCD val (87 images) and test "
        "(72 images); mean over seeds, per seed in brackets (runs of one spec and seed averaged). Δ = A − B. "
        "Seed SD: the larger sample SD over seeds of the two arms' val AP; with one seed, the seed SD of today's "
        "sweep cells on val at that noise (marked †). Re-run: the largest val AP range of one spec run twice at "
        "that noise.",
        "",
        "| # | default | noise | epochs | shared settings | seeds | A → B | val AP A | val AP B | val Δ per seed "
        "| val Δ | seed SD | test AP A / B | test Δ | on val |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    details = []
    for d in rep["defaults"]:
        for c in d["comparisons"]:
            seeds = ", ".join(str(p["seed"]) for p in c["seeds"])
            per_a = " / ".join(f"{p['val_a']:.3f}" for p in c["seeds"])
            per_b = " / ".join(f"{p['val_b']:.3f}" for p in c["seeds"])
            sd = (f"{c['seed_sd']:.3f}" if c["seed_sd"] is not None
                  else f"{c['ref_sd']:.3f}†" if c["ref_sd"] is not None else "–")
            tdelta = "–" if c["test_delta"] is None else f"{c['test_delta']:+.3f}"
            lines.append(
                f"| {c['id']} | `{d['default']}` | {c['noise']:.0%} | {c['epochs']} | {c['context']} | {seeds} "
                f"| {_fmt(c['a'])} → {_fmt(c['b'])} | **{c['val_a']:.3f}** ({per_a}) "
                f"| **{c['val_b']:.3f}** ({per_b}) | {' / '.join(f'{x:+.3f}' for x in c['seed_deltas'])} "
                f"| **{c['val_delta']:+.3f}** | {sd} | {_num(c['test_a'])} / {_num(c['test_b'])} | {tdelta} "
                f"| {c['verdict']} |")
            for p in c["seeds"]:
                for arm in ("a", "b"):
                    for r in p[f"runs_{arm}"]:
                        more = " …" if len(r["sources"]) > 2 else ""
                        details.append(
                            f"| {c['id']} | {p['seed']} | {arm.upper()}: {_fmt(c[arm])} | {r['val']:.3f} "
                            f"| {_num(r['test'])} | {r['commit']} "
                            f"| {', '.join(_short(s) for s in r['sources'][:2])}{more} |")
        for m in d["no_pair"]:
            lines.append(f"| – | `{d['default']}` | {m['noise']:.0%} | – | {m['note']} "
                         "| – | – | – | – | – | – | – | – | – | – |")
    lines += ["", "Every run behind the table (a seed with two runs of one spec: replicates, averaged above; "
              "`FILE@commit`: a version of FILE in git history, under `benchmarks/results/`):", "",
              "| # | seed | value | val AP | test AP | commit (cell) | recorded in |",
              "|---|---|---|---|---|---|---|", *details, ""]
    lines += ["How each default was chosen (on test):", ""]
    lines += [f"- `{d['default']}` = {_fmt(d['value'])} (was {_fmt(d['before'])}): {d['chosen_on_test']}."
              for d in rep["defaults"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/bccd",
                    help="BCCD dataset dir, to read the aspect-ratio grouping by its effect (optional)")
    ap.add_argument("--no-history", dest="history", action="store_false",
                    help="read the working tree only, not the cells' earlier versions in git")
    ap.add_argument("--out", default=f"{RESULTS}/val_recheck", help="writes OUT.json and OUT.md")
    a = ap.parse_args(argv)
    data = a.data if Path(a.data).is_dir() else None
    if data is None:
        print(f"[val_recheck] {a.data}: not found; aspect-ratio grouping compared as recorded", file=sys.stderr)
    files = tree_files() + (history_files() if a.history else [])
    runs = load_runs(files, data)
    today_files = [(lbl, txt) for lbl, txt in tree_files() if lbl.startswith(TODAY + "/")]
    runs_today = load_runs(today_files, data)
    rep = report(runs, runs_today, data)
    rep["command"] = "python benchmarks/val_recheck.py" + ("" if a.history else " --no-history")
    md = markdown(rep)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rep, indent=1) + "\n")
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
