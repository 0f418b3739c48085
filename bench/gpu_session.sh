#!/usr/bin/env bash
# One GPU session of CUDA checks and benchmarks, sized for about 10 minutes on an H100/H200.
#
#   bench/gpu_session.sh OUTDIR [TONE_MODEL.nemo]
#
# With a venv from setup_env.sh: PY=.venv/bin/python. With streamd installed from wheels on
# PYTHONPATH instead (bench/offline_wheels.sh), run it outside the checkout: `python -m streamd`
# in the checkout's root would import the source tree, which lacks the installed
# streamd.patches/streamd.mocks layout (an editable install maps them).
# Stages run in order of importance, each with its own time limit, so that one slow or failing
# stage leaves the others' results in OUTDIR (logs, JSON, tables.md, stages.txt):
#   1. correctness on the device: the tone model recognizes known tone audio on DEVICE in
#      float32 and bfloat16 at every chunk size (bench/device_check.py); RNNT parity against the
#      CPU. Skipped without TONE_MODEL; if the engine crashes there, the script stops.
#   2. nemotron-0.6b (untrained: same shapes and FLOPs) built
#   3. real-time capacity through the server at 160 and 1120 ms chunks (Riva NIM's published
#      figures: >400 streams at 160 ms, >1500 at 1120 ms), the server logs kept
#   4. engine ceiling in DTYPE with the RNNT decoder's CUDA graphs on and off (tokens/s column)
#   5. RNNT parity CPU fp32 vs DEVICE/DTYPE on nemotron-0.6b
# Environment: PY (default python3), DEVICE (cuda), DTYPE (bfloat16), the sizes below, and
# PACK: a .tar.gz of OUTDIR rewritten after every stage (for runners that fetch few files).
set -uo pipefail
OUT="${1:?usage: bench/gpu_session.sh OUTDIR [TONE_MODEL.nemo]}"
TONES="${2:-}"
PY="${PY:-python3}"
DEVICE="${DEVICE:-cuda}"
DTYPE="${DTYPE:-bfloat16}"
ARCH="${ARCH:-nemotron-0.6b}"
ENGINE_STREAMS="${ENGINE_STREAMS:-1,64,256,1024}"
ENGINE_SECONDS="${ENGINE_SECONDS:-5}"
RAMP_160="${RAMP_160:-50,100,200,400,800}"
RAMP_1120="${RAMP_1120:-200,400,800,1600,3200}"
CAPACITY_SECONDS="${CAPACITY_SECONDS:-10}"
MAX_BATCH="${MAX_BATCH:-2048}"
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$OUT"
MODEL="$(mktemp -d)/model.nemo"
trap 'rm -rf "$(dirname "$MODEL")"' EXIT
STREAMD=("$PY" -m streamd --log-format json)
ON_DEVICE=(--device "$DEVICE" --dtype "$DTYPE")

stage() {  # stage NAME SECONDS COMMAND...: run with a limit, log to OUT/NAME.log, record the status
    local name="$1" limit="$2" started=$SECONDS status
    shift 2
    timeout --signal=INT --kill-after=20 "$limit" "$@" >"$OUT/$name.log" 2>&1
    status=$?
    echo "stage $name: exit $status in $((SECONDS - started)) s" | tee -a "$OUT/stages.txt"
    if [ -n "${PACK:-}" ]; then
        tar -czf "$PACK" -C "$OUT" .
    fi
    return $status
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/machine.txt"
"$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, torch.cuda.is_available())" \
    | tee -a "$OUT/machine.txt"
"${STREAMD[@]}" tones abcdefghabcdefgh --out "$OUT/tones.wav" --seed 1 >/dev/null || exit 1

if [ -n "$TONES" ]; then
    # One process per dtype: on torch 2.11 + CUDA, a second .nemo load in a process that had run
    # the engine failed with a weights-only unpickling error (2026-11-26; the same two loads
    # without the engine run between them passed).
    for dtype in float32 bfloat16; do
        stage "correctness-$dtype" 90 "$PY" "$HERE/device_check.py" "$TONES" --device "$DEVICE" --dtype "$dtype"
        status=$?
        grep -a -E "ms:|sent|Error" "$OUT/correctness-$dtype.log" | tail -12
        if [ $status -ne 0 ] && [ $status -ne 3 ]; then
            echo "the engine does not run on $DEVICE; stopping"
            exit 1
        fi
    done
    stage parity-tones 60 "${STREAMD[@]}" parity rnnt --model "$TONES" --audio "$OUT/tones.wav" \
        --test "device=$DEVICE,dtype=$DTYPE" --out "$OUT/parity-tones.json"
fi

stage model 180 "${STREAMD[@]}" model create --arch "$ARCH" --out "$MODEL" || exit 1

engine() {  # engine on|off: the engine ceiling with the RNNT decoder's CUDA graphs on or off
    stage "engine-graphs-$1" 150 "${STREAMD[@]}" bench engine --model "$MODEL" "${ON_DEVICE[@]}" \
        --decoder-cuda-graphs "$1" --streams "$ENGINE_STREAMS" --chunk-ms 160,1120 --seconds "$ENGINE_SECONDS" \
        --no-sequential --out "$OUT/engine-graphs-$1.json" --markdown "$OUT/tables.md"
}
capacity() {  # capacity CHUNK_MS RAMP: one run per chunk size, so that a run cut short leaves the others'
    stage "capacity-$1" 240 "${STREAMD[@]}" bench server --model "$MODEL" "${ON_DEVICE[@]}" \
        --scenarios capacity --chunk-ms "$1" --ramp "$2" --max-batch "$MAX_BATCH" --frame-ms chunk \
        --no-aligned --seconds "$CAPACITY_SECONDS" --server-log-dir "$OUT" --out "$OUT/capacity-$1.json" \
        --markdown "$OUT/tables.md"
}
capacity 160 "$RAMP_160"
capacity 1120 "$RAMP_1120"
engine on
engine off
stage parity-nemotron 90 "${STREAMD[@]}" parity rnnt --model "$MODEL" --audio "$OUT/tones.wav" \
    --test "device=$DEVICE,dtype=$DTYPE" --out "$OUT/parity-nemotron.json"
cat "$OUT/tables.md" "$OUT/stages.txt"
