#!/usr/bin/env bash
# Prepare a GPU check on this (networked, CPU) machine: download the wheels scripts/gpu_wheels.txt names, for the GPU
# machine's Python 3.12 on manylinux x86_64, into the git-ignored .whl/ folder, check that the folder and the working
# tree fit the 64 MiB that may travel, and print the command and the carry list for the run there (which reaches no
# registry: scripts/gpu_check.sh installs these wheels offline).
#
# Usage: scripts/gpu_prepare.sh [--check-with PYTHON]
#   --check-with PYTHON  also install the folder the way the GPU check does (--no-index --no-deps --target) into a
#                        temporary folder and import mmrl's training modules with PYTHON (a Python 3.12 with torch and
#                        without pydantic/math-verify is the closest to the GPU image a CPU machine gets).
# Environment: WHEEL_PYTHON_VERSION (default 3.12: the GPU image's; 3.11 rehearses the same flow on a 3.11 Python).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

check_with=""
while [ $# -gt 0 ]; do
  case "$1" in
    --check-with) check_with="${2:-}"; shift 2 || { echo "gpu_prepare: --check-with needs a Python" >&2; exit 2; } ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "gpu_prepare: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

PY="${PYTHON:-python3}"
PYVER="${WHEEL_PYTHON_VERSION:-3.12}"
DEST=.whl
LIMIT_MIB=64
mapfile -t SPECS < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' scripts/gpu_wheels.txt | awk '{print $1}')
[ "${#SPECS[@]}" -gt 0 ] || { echo "gpu_prepare: scripts/gpu_wheels.txt names no wheel" >&2; exit 1; }

# A fresh folder: a wheel left from an older pin would be a second version of its package, which stops the install.
rm -rf "$DEST"
mkdir -p "$DEST"
# pip matches each manylinux tag exactly: name the ones the compiled wheels are published under (pydantic-core: 2_17).
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$tag")
done
echo "gpu_prepare: downloading ${#SPECS[@]} wheels for CPython $PYVER manylinux x86_64 into $DEST/"
if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${platforms[@]}" -d "$DEST" "${SPECS[@]}"; then
  echo "gpu_prepare: pip download failed (see above)" >&2
  exit 1
fi

# Exactly one wheel per pinned name (wheel file names normalise '-' to '_').
status=0
for spec in "${SPECS[@]}"; do
  name="${spec%%==*}"
  version="${spec#*==}"
  stem="$(echo "$name" | tr '[:upper:]-' '[:lower:]_')"
  count=$(find "$DEST" -maxdepth 1 -type f -iname "${stem}-*.whl" | wc -l)
  exact=$(find "$DEST" -maxdepth 1 -type f -iname "${stem}-${version}-*.whl" | wc -l)
  if [ "$count" -ne 1 ] || [ "$exact" -ne 1 ]; then
    echo "gpu_prepare: expected one wheel of $spec in $DEST/, found $count ($exact of that version)" >&2
    status=1
  fi
done
[ "$status" -eq 0 ] || exit 1

# What travels: tracked + untracked-not-ignored files, plus the carried folder, 64 MiB in all.
wheel_bytes=$(du -sb "$DEST" | awk '{print $1}')
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null \
  | awk '{s += $1} END {print s + 0}')
total=$((wheel_bytes + tree_bytes))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "gpu_prepare: $DEST/ holds $(find "$DEST" -maxdepth 1 -type f -name '*.whl' | wc -l) wheels, $(mib "$wheel_bytes");" \
  "the working tree $(mib "$tree_bytes"); together $(mib "$total") of the ${LIMIT_MIB} MiB that may travel"
if [ "$total" -ge $((LIMIT_MIB * 1048576)) ]; then
  echo "gpu_prepare: over ${LIMIT_MIB} MiB: the run would not be sent" >&2
  exit 1
fi

if [ -n "$check_with" ]; then
  site="$(mktemp -d)"
  trap 'rm -rf "$site"' EXIT
  # The same install as scripts/gpu_check.sh's first step, then the imports a GRPO step and the check's programs make.
  if ! "$check_with" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$DEST"/*.whl; then
    echo "gpu_prepare: the wheels did not install with $check_with" >&2
    exit 1
  fi
  if ! PYTHONPATH="$site:$PWD" "$check_with" -c '
import sys
import pydantic, math_verify, torch, transformers
import mmrl.rl.trainer, mmrl.sft.trainer, mmrl.rewards.accuracy
from math_verify import parse, verify
assert verify(parse("$\\frac{1}{2}$"), parse("0.5")), "math-verify cannot compare 1/2 with 0.5"
print(f"gpu_prepare: installed and imported with Python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}, pydantic {pydantic.VERSION} (from {pydantic.__file__})")
'; then
    echo "gpu_prepare: mmrl does not import with the wheels under $check_with" >&2
    exit 1
  fi
fi

echo "gpu_prepare: ready. On the GPU machine, with carry [\"$DEST\"]:"
echo "  bash scripts/gpu_check.sh"
echo "carry: [\"$DEST\"]"
