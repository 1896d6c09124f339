#!/usr/bin/env bash
# The README's picture (docs/images/bccd_show.png): clean, noisy and refined boxes of one BCCD training image,
# drawn by `ssddet show` from an SSD-Det run trained on BCCD with `--noise 0.4` (noise seed 45), e.g. the noise
# sweep's runs/sweep/n40_ssddet_s0.
#   benchmarks/readme_picture.sh BCCD_DIR RUN_DIR [IMAGE_ID] [OUT_PNG]      (defaults: image 107, the README's)
# SSDDET overrides the command (e.g. SSDDET="python -m ssddet.cli" in a checkout without an install); REFINED=FILE
# uses an existing `ssddet refine` export of RUN_DIR (e.g. the sweep's runs/sweep/n40_ssddet-fr_s0.refined.json).
set -euo pipefail
BCCD=${1:?BCCD_DIR}
RUN=${2:?RUN_DIR}
ID=${3:-107}
OUT_PNG=${4:-docs/images/bccd_show.png}
SSDDET=${SSDDET:-ssddet}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
$SSDDET noise --data "$BCCD" --noise 0.4 --noise-seed 45 --split train --out "$WORK/noisy.json"
REFINED=${REFINED:-$WORK/refined.json}
[ -f "$REFINED" ] || $SSDDET refine --checkpoint "$RUN/checkpoint.pt" --data "$BCCD" --out "$REFINED"
$SSDDET show --ann "$WORK/noisy.json" --images "$BCCD" --compare "$REFINED" --ids "$ID" --out "$WORK/show"
cp "$WORK"/show/"$ID"_*.png "$OUT_PNG"
echo "wrote $OUT_PNG from $RUN ($(head -n 2 "$RUN/command.txt" | tail -n 1))"
