#!/usr/bin/env bash
# GPU check: does mmrl train on this machine's CUDA device(s), and how fast?
#   1. installs the `gpu` extra (flash-attn) if it can (a failed build is reported, not fatal: SDPA is used instead),
#   2. runs the gpu-marked tests (GRPO and SFT in bf16 on the tiny presets, flash-attention 2 when installed,
#      2-GPU data parallel when two devices are visible),
#   3. runs benchmarks/gpu_throughput.py on the qwen2.5-vl-3b architecture (random weights, bf16): tokens/s, peak
#      memory and MFU of the rollout and of the training forward+backward,
#   4. the same with rollouts by the colocated vLLM engine (`--backend vllm`) where the `vllm` extra is installed
#      (INSTALL_VLLM=1 installs it first, then runs the vLLM gpu tests step 2 skipped: it pins its own torch, so it
#      is opt-in); skipped with a line otherwise.
# Usage: scripts/gpu_check.sh [extra arguments for benchmarks/gpu_throughput.py]
# Exits 0 with a one-line message where no CUDA device is visible; else non-zero if the tests or the benchmark fail.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device visible (torch.cuda.is_available() is False); nothing to check"
  exit 0
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, transformers; print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, {torch.cuda.device_count()} device(s)')"

echo "== 1/4 gpu extra (flash-attn)"
if "$PY" -c "import flash_attn" 2>/dev/null; then
  echo "flash-attn already installed"
else
  # The extra's requirements, read from pyproject.toml (flash-attn builds against the installed torch: no isolation).
  GPU_REQS=$("$PY" - <<'PYEOF'
import re
text = open("pyproject.toml").read()
block = re.search(r"^gpu\s*=\s*\[(.*?)\]", text, re.S | re.M)
print(" ".join(re.findall(r'"([^"]+)"', block.group(1))) if block else "flash-attn")
PYEOF
)
  echo "installing: $GPU_REQS"
  if ! timeout "${FLASH_ATTN_INSTALL_TIMEOUT:-1200}" "$PY" -m pip install --no-build-isolation $GPU_REQS; then
    echo "gpu_check: could not install the gpu extra ($GPU_REQS); continuing with PyTorch SDPA attention"
  fi
fi

echo "== 2/4 gpu-marked tests"
"$PY" -m pytest -q -m gpu -p no:cacheprovider tests/
tests_rc=$?

echo "== 3/4 throughput: qwen2.5-vl-3b architecture, random weights, bf16"
"$PY" benchmarks/gpu_throughput.py --preset qwen2.5-vl-3b --dtype bf16 "$@"
bench_rc=$?

echo "== 4/4 throughput with vLLM rollouts (rollout.backend: vllm): qwen2.5-vl-3b architecture, bf16"
vllm_rc=0
vllm_tests_rc=0
if [ "${INSTALL_VLLM:-0}" = "1" ] && ! "$PY" -c "import vllm" 2>/dev/null; then
  # The extra of the installed torch (one per torch: a plain vllm requirement would replace it).
  VLLM_EXTRA=$("$PY" -c "import torch; print('vllm-torch' + ''.join(torch.__version__.split('.')[:2]))")
  if timeout "${VLLM_INSTALL_TIMEOUT:-1800}" "$PY" -m pip install -e ".[$VLLM_EXTRA]"; then
    # Step 2 ran before the extra was there, so its vLLM tests were skipped: run them now.
    "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/integration/test_vllm_backend.py
    vllm_tests_rc=$?
  else
    echo "gpu_check: could not install the vllm extra"
  fi
fi
if "$PY" -c "import vllm" 2>/dev/null; then
  # vLLM pins its own torch: a flash-attn built against the previous one is still found but no longer imports.
  attn_args=()
  if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('flash_attn') is None)" 2>/dev/null \
      && ! "$PY" -c "import flash_attn" 2>/dev/null; then
    echo "gpu_check: flash-attn does not import against vLLM's torch; the vLLM benchmark uses SDPA attention"
    attn_args=(--attn sdpa)
  fi
  "$PY" benchmarks/gpu_throughput.py --preset qwen2.5-vl-3b --dtype bf16 --backend vllm ${attn_args[@]+"${attn_args[@]}"} "$@"
  vllm_rc=$?
  [ "$vllm_rc" -eq 0 ] && vllm_rc=$vllm_tests_rc
else
  echo "gpu_check: the vllm extra is not installed; skipping (pip install \"mmrl[vllm-torchXYZ]\" for your torch, README, or INSTALL_VLLM=1)"
fi

echo "gpu_check: tests exit code $tests_rc, benchmark exit code $bench_rc, vllm benchmark exit code $vllm_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$vllm_rc" -eq 0 ]
