#!/usr/bin/env bash
# The README's main-command table: `ssddet train --noise 0.4` and its `--method vanilla` baseline on the
# built-in set, each from a fresh data directory (so the set's generation is in the wall time), default threads,
# one run at a time. Run it on an otherwise idle machine; the times are the point.
#   benchmarks/main_command.sh [OUT_DIR] [SEED...]          (defaults: runs/main_cmd, seeds 0 1)
# METHODS="ssddet vanilla" picks the methods; SSDDET overrides the command (e.g. "python -m ssddet.cli").
# Writes OUT_DIR/<method>_s<seed>/ (the runs), OUT_DIR/wall.tsv and OUT_DIR/summary.json.
set -euo pipefail
OUT=${1:-runs/main_cmd}
shift || true
SEEDS=${*:-0 1}
METHODS=${METHODS:-ssddet vanilla}
SSDDET=${SSDDET:-ssddet}
mkdir -p "$OUT"
for seed in $SEEDS; do
  for method in $METHODS; do
    run="$OUT/${method}_s${seed}"
    rm -rf "$run" "$OUT/home"
    SECONDS=0
    SSDDET_HOME="$OUT/home" $SSDDET train --noise 0.4 --method "$method" --seed "$seed" --out "$run"
    printf '%s\t%s\t%s\n' "$method" "$seed" "$SECONDS" | tee -a "$OUT/wall.tsv"
  done
done
python "$(dirname "$0")/summarize_runs.py" "$OUT"/*_s* --json "$OUT/summary.json"
