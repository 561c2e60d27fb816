#!/usr/bin/env bash
# One-shot GPU check of the CUDA backend (issue 14), for a bare GPU machine: installs
# nothing from the network, runs every step below within a time budget, and writes every
# figure to one JSON file ($OUT/gpu_check.json) plus the combined log ($OUT/check.log).
#
#   bash tests/gpu/check.sh [--dry-run] [--out DIR] [--budget SECONDS] [--only a,b] [--skip a,b]
#
# Steps (tests/gpu/steps.py does each one and writes its JSON):
#   env           versions, the GPU, its device-to-device copy bandwidth (the roofline)
#   warm          NVRTC cubins for this GPU and Numba's cache, filled in parallel
#   ttft_prepare  (background, CPU) a random llama2-7b fp16 GGUF, loaded once: the cold
#                 start quantizes it into the int8 cache
#   gpu_tests     pytest tests/test_cuda_{backend,compile,emulated}.py tests/test_formats_gpu.py
#   validate      `llama-chat validate --json` on the bundled stories260K and random
#                 shapes x weight types (run beside gpu_tests: both only check results)
#   bench_int8 bench_fp16 bench_q4_k
#                 `llama-chat bench --random llama2-7b --device cuda --quant Q --json`, as a
#                 fraction of the copy bandwidth (the GPU otherwise idle)
#   speculate     the speculative decode step on/off, interleaved: the default it earns
#   ttft          warm time to first token of the 7B int8 model from the cache (staged and
#                 plain uploads, interleaved)
#   tui           the TUI on the GPU, its memory panel (needs textual; saves tui_gpu.svg)
#   tiles         (if time is left) every decode tile variant's speed, for tuning the tiles
#
# Carried wheels: if .whl/*.whl exist they are installed (no index, no deps) into
# the run's own folder first (--no-index, as the device README describes); fetch them with
# tests/gpu/fetch_wheels.sh.
#
# --dry-run needs no GPU: the same structure, argument handling, JSON assembly and every
# non-GPU part (the model file and cold load at a tiny shape, the CPU halves of bench and
# ttft, the pytest collection), with the GPU parts marked skipped. CI runs it
# (tests/test_gpu_check_script.py).
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 2

DRY=0
OUT_DIR=${OUT:-}
BUDGET=420
ONLY=""
SKIP=""
usage() { sed -n '2,/^set -u/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; }
need() { [ $# -ge 2 ] && [ -n "$2" ] || { echo "check.sh: $1 needs a value (see --help)" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) need "$@"; OUT_DIR=$2; shift ;;
        --budget) need "$@"; BUDGET=$2; shift ;;
        --only) need "$@"; ONLY=$2; shift ;;
        --skip) need "$@"; SKIP=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$BUDGET" in ''|*[!0-9]*) echo "check.sh: --budget wants whole seconds, got $BUDGET" >&2; exit 2 ;; esac
OUT_DIR=${OUT_DIR:-${TMPDIR:-/tmp}/gpu-check-out}
mkdir -p "$OUT_DIR" || exit 2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 2
LOG="$OUT_DIR/check.log"
: > "$LOG"
START=$(date +%s)
PY=${PYTHON:-python3}

say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
wanted() {  # is step $1 selected by --only / --skip?
    if [ -n "$ONLY" ] && ! echo ",$ONLY," | grep -q ",$1,"; then return 1; fi
    if [ -n "$SKIP" ] && echo ",$SKIP," | grep -q ",$1,"; then return 1; fi
    return 0
}

# -- environment: carried wheels, the repository on the path, caches in the run's folder
if ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
    say "installing carried wheels from .whl/ into $WORK/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        "$ROOT"/.whl/*.whl >>"$LOG" 2>&1 || say "warning: installing the carried wheels failed (see check.log)"
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export XDG_CACHE_HOME="$WORK/cache"      # cubins, the quant cache: fresh for every run
# gpu_tests and validate run side by side, JOBS processes each, two Numba threads apiece
JOBS=$(( $(nproc 2>/dev/null || echo 2) / 4 ))
[ "$JOBS" -ge 1 ] || JOBS=1
[ "$JOBS" -le 8 ] || JOBS=8
export NUMBA_NUM_THREADS=${NUMBA_NUM_THREADS:-2}
DRYFLAG=""
[ "$DRY" = 1 ] && DRYFLAG="--dry-run"
say "check.sh: root $ROOT, work $WORK, out $OUT_DIR, budget ${BUDGET}s, dry run $DRY, jobs $JOBS, python $("$PY" -V 2>&1)"

# step NAME MIN_SECONDS MAX_SECONDS ARGS...: run steps.py ARGS under a timeout, log it, and
# record its exit status and seconds in WORK/NAME.run.json; skipped (with the reason) if
# it is not selected or fewer than MIN_SECONDS of the budget remain.
step() {
    local name=$1 min=$2 max=$3
    shift 3
    local run="$WORK/$name.run.json"
    if ! wanted "$name"; then
        printf '{"skipped": "not selected"}\n' > "$run"
        return 0
    fi
    local rem
    rem=$(left)
    if [ "$rem" -lt "$min" ]; then
        say "$name: skipped, ${rem}s of the budget left (needs ${min}s)"
        printf '{"skipped": "out of time: %ss left of the budget, the step needs %ss"}\n' "$rem" "$min" > "$run"
        return 0
    fi
    [ "$max" -gt "$rem" ] && max=$rem
    say "$name: start (up to ${max}s)"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$max" "$PY" tests/gpu/steps.py "$@" --work "$WORK" $DRYFLAG \
        > "$WORK/$name.log" 2>&1
    rc=$?
    printf '{"rc": %d, "seconds": %d}\n' "$rc" "$(( $(date +%s) - t0 ))" > "$run"
    { echo "===== $name (exit $rc, $(( $(date +%s) - t0 ))s)"; tail -c 200000 "$WORK/$name.log"; } >> "$LOG"
    [ "$rc" = 124 ] && say "$name: TIMED OUT after ${max}s"
    say "$name: exit $rc after $(( $(date +%s) - t0 ))s"
    return 0
}

finish() {
    "$PY" tests/gpu/steps.py assemble --work "$WORK" --out "$OUT_DIR/gpu_check.json" \
        --total-s "$(( $(date +%s) - START ))" $DRYFLAG >> "$LOG" 2>&1
    [ -f "$WORK/junit.xml" ] && cp "$WORK/junit.xml" "$OUT_DIR/junit.xml"
    say "done in $(( $(date +%s) - START ))s: $OUT_DIR/gpu_check.json"
    "$PY" - "$OUT_DIR/gpu_check.json" <<'EOF' | tee -a "$LOG"
import json, sys
r = json.load(open(sys.argv[1]))
for k, v in r["checks"].items():
    print(f"  {k:32s} {v}")
for k, v in r["steps"].items():
    print(f"  step {k:14s} {v.get('status')}: {v.get('reason') or v.get('error') or ''}")
EOF
    rm -rf "$WORK"
}
trap finish EXIT

# -- correctness first, then timings with the GPU to themselves ----------------------------
step env 20 120 env
step warm 30 240 warm
if wanted ttft_prepare; then   # CPU and disk: overlaps the GPU steps below
    ( step ttft_prepare 60 400 ttft_prepare --timeout 380 ) &
    PREP_PID=$!
else
    printf '{"skipped": "not selected"}\n' > "$WORK/ttft_prepare.run.json"
    PREP_PID=""
fi
( step gpu_tests 60 300 gpu_tests --jobs "$JOBS" --timeout 290 ) &
TESTS_PID=$!
step validate 40 300 validate --jobs "$JOBS" --timeout 200
wait "$TESTS_PID"
for q in int8 fp16 q4_k; do
    step "bench_$q" 25 90 bench --quant "$q" --timeout 85
done
step speculate 30 90 speculate --rounds 4 --gen-tokens 96
[ -n "$PREP_PID" ] && wait "$PREP_PID"
step ttft 15 90 ttft --repeat 2 --timeout 40
step tui 15 60 tui --out-dir "$OUT_DIR"
step tiles 45 120 tiles --timeout 110     # last: tuning data, when the budget allows
exit 0
