#!/usr/bin/env bash
# GPU check: does mmrl train on this machine's CUDA device, how exact is its shared-prefix forward there, how fast is
# the qwen2.5-vl-3b architecture, and does one whole 3B GRPO step fit? Offline: it never reaches a package registry.
#
# Usage: scripts/gpu_check.sh [--device cuda|cpu]
#   --device cuda (default)  the check, sized for one H100 (every step's timeout added up: 6 minutes)
#   --device cpu             the same steps at tiny sizes: the rehearsal the test suite runs
# Prepare on a networked machine first: scripts/gpu_prepare.sh downloads the wheels the GPU image lacks into .whl/
# (carry that folder with the working tree); step `wheels` installs them here with --no-index into a temporary folder
# put on PYTHONPATH.
#
# Steps, most important first; each has its own timeout and its own log $OUT/<step>.log, and a failing step does not
# stop the next:
#   wheels      install .whl/*.whl offline (--no-index --no-deps --target)
#   versions    Python, torch/CUDA, transformers, accelerate, peft, pydantic, math-verify; the device and its memory
#   tests       pytest -m gpu: GRPO and SFT steps in bf16 on the tiny presets with SDPA (tests/ on CUDA; on the CPU
#               tests/integration/test_gpu.py, where they are skipped: collecting all of tests/ takes minutes there);
#               the vLLM and flash-attention tests run in their own steps
#   prefix      benchmarks/prefix_exactness.py: shared-prefix log-probs and gradients vs the naive forward, fp32 and
#               bf16, checkpointing off and on, the measured differences
#   throughput  benchmarks/gpu_throughput.py: qwen2.5-vl-3b architecture (random weights, bf16): rollout and training
#               tokens/s, MFU, peak memory
#   grpo_step   benchmarks/grpo_step.py: one whole GRPO step at 3B (AdamW, KL reference, gradient checkpointing):
#               fits or not, peak memory, seconds
#   async       benchmarks/async_rollout.py --no-sft: a few synchronous and `max_staleness: 1` steps of the small model,
#               samples/s of each, staleness. On one GPU the trainer and its rollout worker share the device and take
#               turns on it: the figure is what the worker costs there (a second copy, the weight transfer), not an
#               overlap, which needs the rollouts on other hardware. Its log is appended to throughput.log
#   vllm, flash_attn  only where those packages are installed (they cannot travel to the lent GPU machine): skipped
#               with a line otherwise
# The last thing written: $OUT/summary.json and $OUT/summary.txt (step, status, seconds, key figures); they are also
# rewritten after every step, marked INCOMPLETE, so a run stopped from outside leaves what it found. $OUT defaults
# to ./gpu_check_out; GPU_CHECK_WHEELS names another wheel folder than .whl, PYTHON another interpreter than python3.
# Exit status: 0 when every step that ran passed, 1 when one failed or timed out, 3 when torch cannot be imported (2:
# a usage error).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT="$PWD"

DEVICE=cuda
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="${2:-}"; shift 2 || break ;;
    --device=*) DEVICE="${1#--device=}"; shift ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (usage: scripts/gpu_check.sh [--device cuda|cpu])" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in
  cuda|cpu) ;;
  *) echo "gpu_check: --device must be cuda or cpu (got '$DEVICE')" >&2; exit 2 ;;
esac

PY="${PYTHON:-python3}"
OUT="${OUT:-./gpu_check_out}"
mkdir -p "$OUT" || { echo "gpu_check: cannot create the output folder $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
# Figures and the installed wheels live outside $OUT: only 8 files come back from there (6 logs + 2 summaries).
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
STEPS="$WORK/steps.tsv"
: > "$STEPS"
# The summary (JSON and text in $OUT) from the steps recorded so far: `summarize partial` after every step, so a run
# the device tool stops at its time limit still leaves one; `summarize final` last. The standard library only.
SUMMARY_PY="$WORK/summary.py"
cat > "$SUMMARY_PY" <<'PYEOF'
import json, re, sys
from pathlib import Path

steps_file, work, out, device = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
final = sys.argv[5] == "final"  # else: written after a step, in case the run is killed before its end


def load(name):
    path = work / f"{name}.json"
    if not path.is_file():
        return {}
    text = path.read_text().strip()
    for candidate in (text, text.splitlines()[-1] if text else ""):  # one JSON document, or JSON as the last line
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return {}


def pytest_counts(log):
    """passed/failed/skipped/... from pytest's closing line ('3 passed, 2 skipped, 1119 deselected in 9.1s')."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    lines = [line for line in text.splitlines() if re.search(r"\b(passed|failed|skipped|error|errors|deselected)\b", line)
             and re.search(r" in [0-9.]+s", line)]
    if not lines:
        return {}
    return {word if word != "error" else "errors": int(n) for n, word in re.findall(r"(\d+) (\w+)", lines[-1])
            if word in ("passed", "failed", "skipped", "deselected", "error", "errors", "xfailed", "xpassed")}


KEYS = {
    "versions": ("python", "torch", "cuda", "device", "memory_gib", "capability", "bf16", "transformers", "accelerate",
                 "peft", "pydantic", "math_verify"),
    "prefix": ("fp32_logp_max_abs_diff", "bf16_logp_max_abs_diff", "ok"),
    "throughput": ("rollout_tokens_per_s", "train_tokens_per_s", "rollout_mfu", "train_mfu",
                   "rollout_peak_memory_gib", "train_peak_memory_gib"),
    "grpo_step": ("fits", "weights_moved", "static_estimate_gib", "build_s", "load_s", "step_s", "rollout_s", "update_s",
                  "peak_allocated_gib", "peak_reserved_gib", "device_memory_gib", "loss", "kl", "grad_norm", "error"),
    "vllm": ("rollout_tokens_per_s", "train_tokens_per_s"),
    "flash_attn": ("rollout_tokens_per_s", "train_tokens_per_s"),
    "async": ("sync_samples_per_s", "async_samples_per_s", "speedup", "mean_staleness", "mean_is_ess"),
}
steps = []
for row in steps_file.read_text().splitlines():
    name, status, seconds, note = (row.split("\t") + [""] * 4)[:4]
    figures = {k: v for k, v in load(name).items() if k in KEYS.get(name, ())}
    if name == "prefix":
        cases = load(name).get("cases", [])
        for kind in ("vision", "text"):
            values = [c[f"{kind}_grad_rel_diff"] for c in cases]
            if values:
                figures[f"max_{kind}_grad_rel_diff"] = max(values)
        bad = [f"{c['dtype']}/checkpointing {'on' if c['checkpointing'] else 'off'}" for c in cases if not c["ok"]]
        if bad:
            figures["out_of_bounds"] = bad
    if name in ("tests", "vllm", "flash_attn"):
        figures.update(pytest_counts(out / f"{name}.log"))
    steps.append({"step": name, "status": status, "seconds": float(seconds or 0), "figures": figures,
                  **({"note": note} if note else {})})
failed = [s["step"] for s in steps if s["status"] in ("fail", "timeout")]
summary = {"device": device, "ok": final and not failed, "complete": final, "failed": failed,
           "seconds": round(sum(s["seconds"] for s in steps), 1), "steps": steps}


def short(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


verdict = "all steps that ran passed" if not failed else "FAILED: " + ", ".join(failed)
if not final:
    verdict = f"INCOMPLETE (the run stopped after step {steps[-1]['step'] if steps else 'none'}); " + verdict
lines = [f"gpu_check summary ({device}): {verdict}; {summary['seconds']} s in steps"]
for s in steps:
    figures = ", ".join(f"{k}={short(v)}" for k, v in s["figures"].items())
    lines.append(f"  {s['step']:<11} {s['status']:<8} {s['seconds']:>7.1f} s  {figures}"
                 + (f"  [{s['note']}]" if s.get("note") else ""))
(out / "summary.txt").write_text("\n".join(lines) + "\n")
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
if final:
    print("\n".join(lines))
PYEOF
summary_py="$PY"
"$PY" -c "" 2>/dev/null || summary_py=python3
summarize() { "$summary_py" "$SUMMARY_PY" "$STEPS" "$WORK" "$OUT" "$DEVICE" "$1" || echo "gpu_check: the summary failed" >&2; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# Sizes per device: 3B on CUDA; tiny on the CPU (the same programs and arguments otherwise).
if [ "$DEVICE" = cuda ]; then
  # seconds per step; together 360 (6 minutes), so a rerun fits the 15 minutes of a lent machine (the async test
  # runs in the async step, not in tests: 30 s moved there)
  T_WHEELS=15 T_VERSIONS=25 T_TESTS=70 T_PREFIX=40 T_THROUGHPUT=80 T_GRPO=100 T_ASYNC=30
  TEST_PATHS=(tests/)
  PREFIX_ARGS=(--preset small)
  THROUGHPUT_ARGS=(--preset qwen2.5-vl-3b --steps 1)
  GRPO_ARGS=(--preset qwen2.5-vl-3b)
  ASYNC_ARGS=(--steps 4 --warmup 1 --group-size 4 --max-new-tokens 8)
else
  # a shared CPU is slow and its load varies: generous limits (the rehearsal checks the steps run, not their speed)
  T_WHEELS=60 T_VERSIONS=120 T_TESTS=240 T_PREFIX=240 T_THROUGHPUT=240 T_GRPO=240 T_ASYNC=240
  TEST_PATHS=(tests/integration/test_gpu.py)
  PREFIX_ARGS=(--preset tiny)
  THROUGHPUT_ARGS=(--preset tiny --steps 1 --prompts 1 --group-size 2 --max-new-tokens 4 --image-side 56)
  GRPO_ARGS=(--preset tiny --prompts 1 --group-size 4 --max-new-tokens 8 --image-side 56)
  ASYNC_ARGS=(--steps 3 --warmup 1 --group-size 2 --max-new-tokens 4)
fi

last_rc=0
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }

# record STEP STATUS SECONDS NOTE: one row of the summary (figures, if any, are in $WORK/STEP.json)
record() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4//$'\t'/ }" >> "$STEPS"
  echo "gpu_check: [$1] $2 ($3 s)${4:+ - $4}"
  summarize partial
}

# step NAME TIMEOUT COMMAND...: run COMMAND under its own timeout, its output in $OUT/NAME.log; with STEP_LOG=OTHER
# appended to $OUT/OTHER.log instead (at most 8 files come back from a GPU run: 6 logs and the 2 summaries)
step() {
  local name="$1" limit="$2" log="$OUT/${STEP_LOG:-$1}.log" start rc status note=""
  shift 2
  echo "gpu_check: [$name] running (limit ${limit} s, log $log)"
  start=$(now)
  if [ -n "${STEP_LOG:-}" ]; then
    echo "== gpu_check step $name ==" >> "$log"
    timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  else
    timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  fi
  rc=$?
  last_rc=$rc
  case "$rc" in
    0) status=ok ;;
    124|137) status=timeout; note="over its ${limit} s limit" ;;
    *) status=fail  # the last line that is neither blank nor a program's JSON figures says why
       note="exit code $rc; last line: $(grep -v -e '^[[:space:]]*$' -e '^{' "$log" | tail -n 1 | cut -c1-200)" ;;
  esac
  record "$name" "$status" "$(elapsed "$start" "$(now)")" "$note"
}

skip() { record "$1" skipped 0.0 "$2"; }

# -- wheels ----------------------------------------------------------------------------------------------------
SITE="$WORK/site"
WHEELS="${GPU_CHECK_WHEELS:-.whl}"  # the folder scripts/gpu_prepare.sh fills (the tests point it elsewhere)
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
shopt -u nullglob
if [ "${#wheels[@]}" -gt 0 ]; then
  step wheels "$T_WHEELS" "$PY" -m pip install --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$SITE" "${wheels[@]}"
  export PYTHONPATH="$SITE:$PYTHONPATH"
elif "$PY" -c "import pydantic, math_verify" 2>/dev/null; then
  skip wheels "no wheels in $WHEELS/; pydantic and math_verify are installed already"
else
  record wheels fail 0.0 "no wheels in $WHEELS/ and pydantic/math_verify are missing: run scripts/gpu_prepare.sh on a networked machine and carry .whl"
fi

# -- versions and device -----------------------------------------------------------------------------------------
step versions "$T_VERSIONS" "$PY" - "$DEVICE" "$WORK/versions.json" <<'PYEOF'
import importlib.util, json, platform, shutil, subprocess, sys
from importlib import metadata

device, out = sys.argv[1], sys.argv[2]
figures = {"python": platform.python_version()}
try:
    import torch
except Exception as err:  # the check cannot run at all: exit 3, which the script reports as "torch missing"
    print(f"versions: torch cannot be imported ({type(err).__name__}: {err})")
    sys.exit(3)
figures.update(torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
# Versions from the distributions' metadata, without importing (vLLM's import alone takes seconds).
for name in ("transformers", "accelerate", "peft", "pydantic", "math_verify", "vllm", "flash_attn"):
    if importlib.util.find_spec(name) is None:
        figures[name] = None
        print(f"versions: {name} is not installed")
        continue
    try:
        figures[name] = metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
        figures[name] = "installed"
if shutil.which("nvidia-smi"):
    print(subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip())
if device == "cuda" and not torch.cuda.is_available():
    json.dump(figures, open(out, "w"))
    print("versions: no CUDA device visible (torch.cuda.is_available() is False)")
    sys.exit(4)
if device == "cuda":
    props = torch.cuda.get_device_properties(0)
    figures.update(device=props.name, devices=torch.cuda.device_count(), memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
else:
    figures.update(device="cpu", threads=torch.get_num_threads())
for key, value in figures.items():
    print(f"{key}: {value}")
json.dump(figures, open(out, "w"))
try:  # the training code imports with what is installed here (pydantic, math-verify from the wheels)
    import math_verify  # noqa: F401  (the accuracy reward imports it when it first scores)
    import mmrl.rl.trainer  # noqa: F401
    import mmrl.sft.trainer  # noqa: F401
except Exception as err:
    print(f"versions: mmrl's trainers do not import ({type(err).__name__}: {err})")
    sys.exit(1)
PYEOF
versions_rc=$last_rc
# -- the rest needs torch and, on CUDA, a device: without them each step would only fail the same way --------------
torch_ok=1
why=""
if [ "$versions_rc" -eq 3 ] || [ "$versions_rc" -eq 126 ] || [ "$versions_rc" -eq 127 ]; then
  torch_ok=0  # 126/127: $PY itself could not be run
  why="torch cannot be imported with $PY (see versions.log)"
elif [ "$versions_rc" -eq 4 ]; then
  why="no CUDA device visible (see versions.log)"
fi
if [ -n "$why" ]; then
  for name in tests prefix throughput grpo_step async; do skip "$name" "$why"; done
else
  # The vLLM and flash-attention tests are gpu-marked too; they run in their own steps below, where installed. The
  # async test's worker on CUDA is the async step's.
  step tests "$T_TESTS" "$PY" -m pytest -q -rs -m gpu -p no:cacheprovider -k "not flash_attention" \
    --deselect tests/integration/test_async_rollout.py::test_the_worker_samples_on_cuda_with_the_previous_version \
    --ignore=tests/integration/test_vllm_backend.py "${TEST_PATHS[@]}"
  step prefix "$T_PREFIX" "$PY" benchmarks/prefix_exactness.py --device "$DEVICE" "${PREFIX_ARGS[@]}" \
    --json "$WORK/prefix.json"
  step throughput "$T_THROUGHPUT" "$PY" benchmarks/gpu_throughput.py --device "$DEVICE" --dtype bf16 \
    "${THROUGHPUT_ARGS[@]}" --json "$WORK/throughput.json"
  step grpo_step "$T_GRPO" "$PY" benchmarks/grpo_step.py --device "$DEVICE" "${GRPO_ARGS[@]}" --json "$WORK/grpo_step.json"
  STEP_LOG=throughput step async "$T_ASYNC" "$PY" benchmarks/async_rollout.py --device "$DEVICE" --no-sft \
    "${ASYNC_ARGS[@]}" --work-dir "$WORK/async" --json "$WORK/async.json"
fi

# -- vLLM and flash-attn: for a machine that has them (neither can travel: a ~300 MB wheel; no wheel at all) ------
has() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }
if [ -n "$why" ]; then
  skip vllm "$why"
  skip flash_attn "$why"
else
  # The commands below are single-quoted on purpose: bash -c expands $1/$2 (the Python, the figures file) itself.
  # shellcheck disable=SC2016
  if [ "$DEVICE" = cuda ] && has vllm; then
    step vllm 300 bash -c '"$1" -m pytest -q -rs -m gpu -p no:cacheprovider tests/integration/test_vllm_backend.py && \
      "$1" benchmarks/gpu_throughput.py --preset qwen2.5-vl-3b --dtype bf16 --attn sdpa --backend vllm --steps 1 \
      --json "$2"' _ "$PY" "$WORK/vllm.json"
  else
    # The extra of the installed torch (mmrl[vllm-torch211] ...): there is no plain vllm extra.
    hint=$("$PY" -c 'import torch; from mmrl.generation.vllm_pairs import install_hint; print(install_hint(torch.__version__))' \
      2>/dev/null) || hint="pip install the mmrl[vllm-torch...] extra of this torch (docs/compatibility.md, tested versions)"
    skip vllm "vLLM is not installed here ($hint on a machine that has a registry, then rerun)"
  fi
  # shellcheck disable=SC2016
  if [ "$DEVICE" = cuda ] && has flash_attn; then
    step flash_attn 180 bash -c '"$1" -m pytest -q -rs -m gpu -p no:cacheprovider tests/integration/test_gpu.py \
      -k flash_attention && "$1" benchmarks/gpu_throughput.py --preset qwen2.5-vl-3b --dtype bf16 \
      --attn flash_attention_2 --steps 1 --json "$2"' _ "$PY" "$WORK/flash_attn.json"
  else
    skip flash_attn "flash-attn is not installed here (pip install 'mmrl[gpu]' where it builds, then rerun)"
  fi
fi

# -- the summary: written after every step (a run killed from outside still leaves one) and, complete, last --
summarize final

if [ "$torch_ok" -eq 0 ]; then
  echo "gpu_check: torch cannot be imported with $PY; nothing was checked" >&2
  exit 3
fi
awk -F'\t' '$2 == "fail" || $2 == "timeout" {failed = 1} END {exit failed ? 1 : 0}' "$STEPS"
