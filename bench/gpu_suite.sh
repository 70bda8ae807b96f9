#!/usr/bin/env bash
# The whole CUDA check of fastq in one command, for a bare GPU machine (torch with CUDA, nvcc, cmake,
# ninja, pybind11, scikit-build-core present; no network):
#   build   pip install --no-build-isolation . with the CUDA kernels for the GPU found (its arch only)
#   tests   every CUDA test (pytest -m cuda; tests/conftest.py marks every test named *cuda*)
#   bench-linear, bench-sparse   bench/gpu_bench_linear.py and gpu_bench_sparse.py (--quick unless --full)
#   memcheck, racecheck   compute-sanitizer over bench/gpu_sanitize.py (every kernel once, small shapes)
# then one summary (summary.md + summary.json, every issue-16 target judged) and the logs
# (gpu_suite_logs.tar.gz) in --out DIR (default: $OUT if set, else ./gpu_suite_out).
#
# Invariants: finishes within --budget seconds (default 540): each step runs under `timeout` with at
# most what is left minus a reserve for the summary, and a step that no longer fits is skipped and
# says so. Progress goes to stdout as it happens. It never changes the GPU's settings. Exit status:
# 0 every step passed, 1 a step failed or timed out, 2 bad arguments, 3 no CUDA device (checked
# before anything is built). --dry-run does everything that needs no GPU (arguments, tool discovery,
# syntax of the scripts, the summary writer) and exits 0.
set -uo pipefail

usage() {
  cat <<'EOF'
usage: bench/gpu_suite.sh [--out DIR] [--budget SECONDS] [--steps LIST] [--tests-k EXPR] [--arch SM]
                          [--full] [--dry-run] [--python PY] [-h|--help]
  --out DIR        where summary.md, summary.json and gpu_suite_logs.tar.gz go (default: $OUT, else ./gpu_suite_out)
  --budget S       wall-time budget in seconds for everything (default 540)
  --steps LIST     comma-separated subset of: build,tests,bench-linear,bench-sparse,memcheck,racecheck (default all)
  --tests-k EXPR   only the CUDA tests matching this pytest -k expression
  --arch SM        CUDA architecture to build for, e.g. 90 (default: the GPU's compute capability)
  --full           full benchmark shape lists instead of --quick
  --dry-run        no GPU needed: check arguments, tools and scripts, write the summary, exit 0
  --python PY      the Python with torch (default: $PYTHON, else python3)
EOF
}

ALL_STEPS="build,tests,bench-linear,bench-sparse,memcheck,racecheck"
OUT_DIR="${OUT:-./gpu_suite_out}"
BUDGET=540
STEPS="$ALL_STEPS"
TESTS_K=""
ARCH=""
QUICK="--quick"
DRY_RUN=0
PY="${PYTHON:-python3}"

die_usage() { echo "gpu_suite: $1 (see --help)" >&2; exit 2; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die_usage "$1 needs a value"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --out) need_value "$@"; OUT_DIR="$2"; shift 2 ;;
    --budget) need_value "$@"; BUDGET="$2"; shift 2 ;;
    --steps) need_value "$@"; STEPS="$2"; shift 2 ;;
    --tests-k) need_value "$@"; TESTS_K="$2"; shift 2 ;;
    --arch) need_value "$@"; ARCH="$2"; shift 2 ;;
    --python) need_value "$@"; PY="$2"; shift 2 ;;
    --full) QUICK=""; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done
[[ "$BUDGET" =~ ^[0-9]+$ ]] && [ "$BUDGET" -ge 60 ] || die_usage "--budget must be a whole number of seconds >= 60, got '$BUDGET'"
[ -z "$ARCH" ] || [[ "$ARCH" =~ ^[0-9]+a?$ ]] || die_usage "--arch must look like 90 or 90a, got '$ARCH'"
IFS=',' read -r -a STEP_LIST <<< "$STEPS"
[ "${#STEP_LIST[@]}" -gt 0 ] || die_usage "--steps is empty"
for s in "${STEP_LIST[@]}"; do
  case ",$ALL_STEPS," in *",$s,"*) ;; *) die_usage "unknown step '$s'; steps are $ALL_STEPS" ;; esac
done
command -v "$PY" >/dev/null 2>&1 || die_usage "python '$PY' not found"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$OUT_DIR" || die_usage "cannot create --out '$OUT_DIR'"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastq_gpu_suite.XXXXXX")"
RESERVE=25  # seconds kept for the summary and the log archive
START=$SECONDS

log() { printf '[gpu_suite +%ds] %s\n' "$((SECONDS - START))" "$*"; }
wants() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
record() {  # step status seconds rc note
  "$PY" -c 'import json, sys; print(json.dumps({"step": sys.argv[1], "status": sys.argv[2], "seconds": int(sys.argv[3]), "rc": int(sys.argv[4]), "note": sys.argv[5]}))' \
    "$1" "$2" "$3" "$4" "$5" >> "$WORK/steps.jsonl"
}
finish() {  # exit code
  log "writing the summary to $OUT_DIR"
  "$PY" "$REPO/bench/gpu_suite_summary.py" --work "$WORK" --out "$OUT_DIR" > "$WORK/summary_stdout.md" 2>&1 \
    || log "summary writer failed: $(tail -n 3 "$WORK/summary_stdout.md")"
  tar -czf "$OUT_DIR/gpu_suite_logs.tar.gz" -C "$WORK" . 2>/dev/null && rm -rf "$WORK" || log "could not archive the logs (kept in $WORK)"
  [ -f "$OUT_DIR/summary.md" ] && cat "$OUT_DIR/summary.md"
  log "done (exit $1)"
  exit "$1"
}

# run_step NAME LIMIT LOG CMD...: runs CMD under timeout with min(LIMIT, budget left - reserve).
FAILED=0
run_step() {
  local name="$1" limit="$2" logf="$3"; shift 3
  local left=$((BUDGET - (SECONDS - START) - RESERVE))
  if [ "$left" -lt 20 ]; then
    log "$name: skipped (budget spent: ${left}s left)"; record "$name" "skipped" 0 0 "budget spent"; return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "$name: starting (limit ${limit}s, log $(basename "$logf"))"
  local t0=$SECONDS rc
  timeout --signal=TERM --kill-after=15 "$limit" "$@" > "$logf" 2>&1
  rc=$?
  local dt=$((SECONDS - t0)) status="passed"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="timeout"; elif [ "$rc" -ne 0 ]; then status="failed"; fi
  log "$name: $status in ${dt}s (rc $rc)"
  if [ "$status" != "passed" ]; then
    FAILED=1
    echo "----- last lines of $(basename "$logf") -----"; tail -n 25 "$logf"; echo "-----"
  fi
  record "$name" "$status" "$dt" "$rc" "${STEP_NOTE:-}"
  STEP_NOTE=""
}

log "fastq GPU suite: repo $REPO, out $OUT_DIR, work $WORK, budget ${BUDGET}s, steps $STEPS"

# ---- preflight (no GPU needed): the environment record and tool discovery ----
"$PY" - "$REPO" > "$WORK/env.json" 2> "$WORK/env.err" <<'EOF'
import json, os, platform, shutil, subprocess, sys, datetime
repo = sys.argv[1]
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
env = {"python": platform.python_version(), "started": datetime.datetime.now().isoformat(timespec="seconds"),
       "commit": (run("git", "-C", repo, "rev-parse", "--short", "HEAD") or "n/a")
       + ("+modified" if run("git", "-C", repo, "status", "--porcelain", "--untracked-files=no") else ""),
       "cores": os.cpu_count()}
cpu = [ln.split(":", 1)[1].strip() for ln in run("lscpu").splitlines() if ln.startswith("Model name")]
env["cpu"] = cpu[0] if cpu else platform.processor() or "n/a"
flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
env["amx"] = ",".join(f for f in ("amx_tile", "amx_int8", "amx_bf16") if f in flags) or "none"
nvcc = run("nvcc", "--version").splitlines()
env["nvcc"] = nvcc[-1] if nvcc else "not found"
env["tools"] = {t: bool(shutil.which(t)) for t in ("nvcc", "cmake", "ninja", "compute-sanitizer", "nvidia-smi", "git")}
env["driver"] = run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader") or "n/a"
try:
    import torch
    env["torch"], env["torch_cuda"] = torch.__version__, torch.version.cuda
    env["cuda_available"] = torch.cuda.is_available()
    if env["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        env["device"], env["capability"] = p.name, f"{p.major}.{p.minor}"
        env["sms"], env["l2_mib"] = p.multi_processor_count, round(getattr(p, "L2_cache_size", 0) / 2**20)
except Exception as exc:  # a broken torch is reported, not fatal to the summary
    env["torch"], env["cuda_available"], env["torch_error"] = "n/a", False, f"{type(exc).__name__}: {exc}"
for mod in ("pybind11", "scikit_build_core", "xdist", "pytest_timeout"):
    try:
        __import__(mod)
        env.setdefault("modules", {})[mod] = True
    except ImportError:
        env.setdefault("modules", {})[mod] = False
print(json.dumps(env))
EOF
[ -s "$WORK/env.json" ] || { log "the environment probe failed: $(tail -n 3 "$WORK/env.err")"; echo '{}' > "$WORK/env.json"; }
envget() {  # envget KEY [SUBKEY]: a value of env.json, empty when absent
  "$PY" -c 'import json, sys
v = json.load(open(sys.argv[1]))
for key in sys.argv[2:]:
    v = v.get(key) if isinstance(v, dict) else None
print("" if v is None else v)' "$WORK/env.json" "$@"
}
DEVICE="$(envget device)"
log "device: ${DEVICE:-none} (sm $(envget capability)), torch $(envget torch), host: $(envget cpu), AMX: $(envget amx)"

if [ "$DRY_RUN" -eq 1 ]; then
  log "dry run: checking tools and scripts; nothing is built or run on a GPU"
  for t in nvcc cmake ninja compute-sanitizer nvidia-smi; do
    log "  tool $t: $([ "$(envget tools "$t")" = "True" ] && echo found || echo missing)"
  done
  "$PY" -m py_compile "$REPO/bench/gpu_sanitize.py" "$REPO/bench/gpu_bench_linear.py" \
    "$REPO/bench/gpu_bench_sparse.py" "$REPO/bench/gpu_suite_summary.py" \
    || { log "a suite script does not compile"; exit 1; }
  for s in "${STEP_LIST[@]}"; do record "$s" "dry run" 0 0 "planned"; done
  finish 0
fi

if [ "$(envget cuda_available)" != "True" ]; then
  log "no CUDA device: torch $(envget torch) sees none$(err="$(envget torch_error)"; [ -n "$err" ] && echo " ($err)"). Nothing was built or run; run this on a GPU machine, or use --dry-run"
  record "preflight" "no device" 0 3 "torch.cuda.is_available() is False"
  finish 3
fi

# ---- build ----
if [ -z "$ARCH" ]; then ARCH="$(envget capability | tr -d .)"; fi
if wants build; then
  export FASTQ_CUDA=ON CMAKE_ARGS="${CMAKE_ARGS:-} -DCMAKE_CUDA_ARCHITECTURES=$ARCH"
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
  STEP_NOTE="sm_$ARCH"
  run_step build 300 "$WORK/build.log" "$PY" -m pip install --no-build-isolation --no-deps -v "$REPO"
fi
# Everything below imports the installed fastq, never the source tree: run from the work dir.
cd "$WORK" || exit 1
"$PY" -c 'import fastq, json; print(json.dumps(fastq._native.build_info()))' > "$WORK/build_info.json" 2>&1 \
  && log "fastq build: $(cat "$WORK/build_info.json")" || log "fastq does not import: $(tail -n 2 "$WORK/build_info.json")"
"$PY" -m fastq doctor > "$WORK/doctor.log" 2>&1 || true

# ---- CUDA tests ----
if wants tests; then
  args=(-m cuda -q -rfEs -p no:cacheprovider --rootdir "$REPO" -c "$REPO/pyproject.toml"
        --junitxml "$WORK/cuda_tests.xml" "$REPO/tests")
  [ -n "$TESTS_K" ] && args+=(-k "$TESTS_K")
  [ "$(envget modules xdist)" = "True" ] && args+=(-n 8)
  [ "$(envget modules pytest_timeout)" = "True" ] && args+=(--timeout 240)
  FASTQ_REQUIRE_NATIVE=1 run_step tests 240 "$WORK/tests.log" "$PY" -m pytest "${args[@]}"
  tail -n 4 "$WORK/tests.log" | sed 's/^/    /'
fi

# ---- benchmarks ----
if wants bench-linear; then
  run_step bench-linear 180 "$WORK/bench_linear.log" "$PY" "$REPO/bench/gpu_bench_linear.py" $QUICK --json "$WORK/bench_linear.json"
fi
if wants bench-sparse; then
  run_step bench-sparse 150 "$WORK/bench_sparse.log" "$PY" "$REPO/bench/gpu_bench_sparse.py" $QUICK --json "$WORK/bench_sparse.json"
fi

# ---- compute-sanitizer ----
SAN_FILTER=()
if command -v compute-sanitizer >/dev/null 2>&1 && compute-sanitizer --help 2>&1 | grep -q -- "--kernel-name"; then
  SAN_FILTER=(--kernel-name kns=fastq)  # instrument fastq's kernels only: torch's run at full speed
fi
for tool in memcheck racecheck; do
  wants "$tool" || continue
  if ! command -v compute-sanitizer >/dev/null 2>&1; then
    log "$tool: skipped (compute-sanitizer not found)"; record "$tool" "skipped" 0 0 "compute-sanitizer not found"; continue
  fi
  FASTQ_REQUIRE_NATIVE=1 run_step "$tool" 150 "$WORK/$tool.log" compute-sanitizer --tool "$tool" --error-exitcode 86 \
    --print-limit 20 "${SAN_FILTER[@]}" "$PY" "$REPO/bench/gpu_sanitize.py"
  grep -E "SUMMARY|cases failed" "$WORK/$tool.log" | sed 's/^/    /'
done

finish "$FAILED"
