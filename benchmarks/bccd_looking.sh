#!/usr/bin/env bash
# The "Looking at the results on BCCD" demo of docs/benchmarks.md: BCCD at 40 % box noise, with the benchmark runs of
# benchmarks/results/bccd_lite0/{noisy,ssddet,oamil,clean} (EfficientNet-Lite0, 6 epochs, noise seed 45).
#   benchmarks/bccd_looking.sh [BCCD_DIR] [RUNS_DIR] [OUT_DIR]
# BCCD_DIR holds annotations.json (a `split` per image) and the images; outputs go to OUT_DIR.
# SSDDET overrides the command (e.g. SSDDET="python -m ssddet.cli" in a checkout without an install).
set -euo pipefail
BCCD=${1:-data/bccd}
RUNS=${2:-benchmarks/results/bccd_lite0}
OUT=${3:-runs/bccd_demo}
SSDDET=${SSDDET:-ssddet}
mkdir -p "$OUT"

# the noisy training boxes the runs trained on (the same generator, level and seed as `--noise 0.4`)
$SSDDET noise --data "$BCCD" --noise 0.4 --noise-seed 45 --split train --out "$OUT/noisy.json"
# the SSD-Det refiner's boxes for them
$SSDDET refine --checkpoint "$RUNS/ssddet/checkpoint.pt" --data "$BCCD" --out "$OUT/refined.json"
# clean / noisy / refined boxes of 16 training images, and a contact sheet
$SSDDET show --ann "$OUT/noisy.json" --images "$BCCD" --compare "$OUT/refined.json" --split train --n 16 \
    --out "$OUT/show"
# training curves: vanilla on noisy boxes vs SSD-Det vs OA-MIL vs vanilla on clean boxes
$SSDDET plot "$RUNS/noisy" "$RUNS/ssddet" "$RUNS/oamil" "$RUNS/clean" \
    --names "vanilla (noisy)" "SSD-Det (noisy)" "OA-MIL (noisy)" "vanilla (clean)" --out "$OUT/curves.png"
# the SSD-Det detector on the test images
mapfile -t TEST < <(python -c "import json, sys; d = json.load(open(sys.argv[1] + '/annotations.json'))
print('\n'.join(sys.argv[1] + '/' + im['file_name'] for im in d['images'] if im.get('split') == 'test'))" "$BCCD")
$SSDDET predict --checkpoint "$RUNS/ssddet/model_final.pt" "${TEST[@]}" --out "$OUT/predict" --score 0.5
# which training boxes are most likely wrong, and how well that ranking finds the wrong ones
$SSDDET audit --checkpoint "$RUNS/ssddet/checkpoint.pt" --ann "$OUT/noisy.json" --images "$BCCD" --split train \
    --out "$OUT/audit.csv" --html "$OUT/audit.html"
# the deployed detector as ONNX, checked with onnxruntime on a test image
$SSDDET export --checkpoint "$RUNS/ssddet/model_final.pt" --out "$OUT/model.onnx" --image "${TEST[0]}"
