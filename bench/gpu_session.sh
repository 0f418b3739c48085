#!/usr/bin/env bash
# One GPU session of CUDA checks and benchmarks: about 12 minutes on an H100/H200 in all, more
# than one 10-minute call; the stages a first call's limit cuts run in a second (STAGES=...).
#
#   bench/gpu_session.sh OUTDIR [TONE_MODEL.nemo]
#
# With a venv from setup_env.sh: PY=.venv/bin/python. With streamd installed from wheels on
# PYTHONPATH instead (bench/offline_wheels.sh), run it outside the checkout: `python -m streamd`
# in the checkout's root would import the source tree, which lacks the installed
# streamd.patches/streamd.mocks layout (an editable install maps them).
# Stages run in order of importance, each with its own time limit, so that one slow or failing
# stage leaves the others' results in OUTDIR (logs, JSON, tables.md, stages.txt):
#   1. correctness on the device: the tone model recognizes known tone audio on DEVICE in DTYPES
#      at every chunk size, with the encoder's CUDA graphs off and on (bench/device_check.py).
#      Skipped without TONE_MODEL; if the engine crashes there, the script stops; if a transcript
#      differs with graphs on, the graphs-on engine stage is skipped.
#   2. nemotron-0.6b (untrained: same shapes and FLOPs) built, calibrated to TOKENS_PER_SECOND (a
#      trained model's token rate: Riva's figures are for a trained model; an untrained one emits
#      10 tokens per frame and the decoder and transcripts then cost several times more;
#      streamd.models.token_rate). TOKENS_PER_SECOND= (empty) keeps the untrained rate.
#   3. real-time capacity through the server at 160 and 1120 ms chunks (Riva NIM's published
#      figures: >400 streams at 160 ms, >1500 at 1120 ms), default settings (encoder eager), the
#      server logs kept. First a probe: a server with the tone model must answer /readyz 200
#      (bench/serve_probe.py; on the lent H200s, gVisor machines, it had stopped answering once
#      ready, 2026-11-26/27: if so, the probe's server log holds any handshake exception and the
#      threads' stacks; then the probe runs again with NeMo's CUDA-graph decoder off, on the CPU,
#      and on the CPU with a CUDA context in the process (or, if the CPU server is silent too, a
#      bare websockets server), to tell the GPU set-up's part, and the capacity runs are skipped).
#      Then 160 ms once more with the engine in its own process (engine_process=true).
#   4. engine ceiling in DTYPE with the encoder's CUDA graphs off and on, then the RNNT decoder's
#      off too (tokens/s column); if "on" fails, last once more with CUDA_LAUNCH_BLOCKING=1 (the
#      failing operation)
#   5. offline: untrained distil-large-v3 Whisper and MMS-300m aligner (`streamd model create-offline`:
#      the real architectures' cost, no weights to download) timed in float32, bfloat16 and
#      float16 on DEVICE; needs WHISPER_LIKE, a Whisper directory to take the tokenizer from
#      (weights not needed: the tokenizer and config files of a converted tiny.en are 4 MB)
#   6. with EXTRA=1: parity CPU fp32 vs DEVICE/DTYPE (tones, nemotron)
# Environment: PY (default python3), DEVICE (cuda), DTYPE (bfloat16), the sizes below,
# STAGES (which of "correctness capacity engine offline" to run; default all: a second, short call
# can run what a first one's time limit cut), and PACK: a .tar.gz of OUTDIR rewritten after every
# stage (for runners that fetch few files).
set -uo pipefail
OUT="${1:?usage: bench/gpu_session.sh OUTDIR [TONE_MODEL.nemo]}"
TONES="${2:-}"
PY="${PY:-python3}"
DEVICE="${DEVICE:-cuda}"
DTYPE="${DTYPE:-bfloat16}"
ARCH="${ARCH:-nemotron-0.6b}"
TOKENS_PER_SECOND="${TOKENS_PER_SECOND-4}"
DTYPES="${DTYPES:-bfloat16}"  # correctness: space-separated
ENGINE_STREAMS="${ENGINE_STREAMS:-64,512}"
ENGINE_SECONDS="${ENGINE_SECONDS:-4}"
RAMP_160="${RAMP_160:-200,410,520,640}"
RAMP_1120="${RAMP_1120:-800,1510,2000,2500}"
RAMP_160_PROCESS="${RAMP_160_PROCESS:-410,520,640}"
CAPACITY_SECONDS="${CAPACITY_SECONDS:-8}"
MAX_BATCH_160="${MAX_BATCH_160:-1024}"
MAX_BATCH_1120="${MAX_BATCH_1120:-2048}"
# Client processes for the capacity runs: one sent and read ~860 messages a second with 13 % of a
# core of the 2-core VM (64 streams of 80 ms frames at 1120 ms chunks); 600 streams at 160 ms
# chunks are 3,750 a second each way.
CLIENT_PROCESSES="${CLIENT_PROCESSES:-6}"
STAGES="${STAGES:-correctness capacity engine offline}"
# Server flags added to every capacity run, e.g. for a second call with STAGES=capacity:
# CAPACITY_FLAGS="--engine-process --encoder-cuda-graphs on" (stage names stay the same: use another OUTDIR).
CAPACITY_FLAGS="${CAPACITY_FLAGS:-}"
WHISPER_LIKE="${WHISPER_LIKE:-}"
OFFLINE_DTYPES="${OFFLINE_DTYPES:-float32 bfloat16 float16}"
ENCODER_GRAPHS=on
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$OUT"
MODEL="$(mktemp -d)/model.nemo"
trap 'rm -rf "$(dirname "$MODEL")"' EXIT
STREAMD=("$PY" -m streamd --log-format json)
ON_DEVICE=(--device "$DEVICE" --dtype "$DTYPE")
want() { [[ " $STAGES " == *" $1 "* ]]; }

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
"$PY" -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, torch.cuda.is_available(), 'transformers', transformers.__version__)" \
    | tee -a "$OUT/machine.txt"
"${STREAMD[@]}" tones abcdefghabcdefgh --out "$OUT/tones.wav" --seed 1 >/dev/null || exit 1

if [ -n "$TONES" ] && want correctness; then
    # One process per dtype: a second .nemo load in a process that had run the engine failed
    # (2026-11-26) while NeMo's NVRTC helper overwrote CPython's shared b" " (now shimmed).
    for dtype in $DTYPES; do
        stage "correctness-$dtype" 120 "$PY" "$HERE/device_check.py" "$TONES" --device "$DEVICE" --dtype "$dtype" \
            --encoder-cuda-graphs off,on
        status=$?
        grep -a -E "ms:|sent|Error" "$OUT/correctness-$dtype.log" | tail -12
        if [ $status -eq 3 ]; then
            ENCODER_GRAPHS=wrong  # transcripts differ with the graphs: not worth timing
        elif [ $status -ne 0 ]; then
            echo "the engine does not run on $DEVICE; stopping"
            exit 1
        fi
    done
fi

if want capacity || want engine; then
    stage model 240 "${STREAMD[@]}" model create --arch "$ARCH" ${TOKENS_PER_SECOND:+--tokens-per-second "$TOKENS_PER_SECOND"} \
        --out "$MODEL" || exit 1
    grep -a '^{"out"' "$OUT/model.log"  # the calibration per chunk size
fi

capacity() {  # capacity NAME CHUNK_MS RAMP MAX_BATCH [FLAGS...]: one run per stage, so that a run cut short leaves the others'
    local name="$1" chunk_ms="$2" ramp="$3" max_batch="$4"
    shift 4
    stage "capacity-$name" 240 "${STREAMD[@]}" bench server --model "$MODEL" "${ON_DEVICE[@]}" \
        --scenarios capacity --chunk-ms "$chunk_ms" --ramp "$ramp" \
        --max-batch "$max_batch" --frame-ms chunk --no-aligned --no-ceiling --seconds "$CAPACITY_SECONDS" \
        --client-processes "$CLIENT_PROCESSES" $CAPACITY_FLAGS "$@" \
        --server-log-dir "$OUT/server-logs-$name" --out "$OUT/capacity-$name.json" --markdown "$OUT/tables.md"
}
probe() {  # probe NAME DEVICE [serve_probe option or key=value...]: does a server turn ready and answer?
    local name="$1" device="$2"
    shift 2
    local status
    stage "serve-probe-$name" 150 "$PY" "$HERE/serve_probe.py" "${TONES:-$MODEL}" --device "$device" \
        --log "$OUT/server-probe-$name.log" max_sessions=600 "$@"
    status=$?
    tail -12 "$OUT/serve-probe-$name.log"
    return $status
}
if ! want capacity; then
    :
elif probe "$DEVICE" "$DEVICE"; then
    capacity 160 160 "$RAMP_160" "$MAX_BATCH_160"
    capacity 1120 1120 "$RAMP_1120" "$MAX_BATCH_1120"
    # The engine in its own process (own GIL) against the thread above: where the server's Python,
    # not the GPU, was the limit (H100, 2026-11-27), this is the lever.
    capacity 160-engine-process 160 "$RAMP_160_PROCESS" "$MAX_BATCH_160" --engine-process
else  # which part of the GPU set-up stops it answering: NeMo's CUDA-graph decoder, the model on the
      # device, or a CUDA context in the process at all?
    probe "$DEVICE-decoder-graphs-off" "$DEVICE" decoder_cuda_graphs=false
    if probe cpu cpu; then
        [ "$DEVICE" = cuda ] && probe cpu-cuda-context cpu --cuda-context
    else  # not streamd's engine on any device: does a bare websockets server answer here?
        probe bare cpu --bare
    fi
fi
engine() {  # engine NAME FLAGS...: the engine ceiling at 160 and 1120 ms
    local name="$1"
    shift
    stage "engine-$name" 150 "${STREAMD[@]}" bench engine --model "$MODEL" "${ON_DEVICE[@]}" "$@" \
        --streams "$ENGINE_STREAMS" --chunk-ms 160,1120 --seconds "$ENGINE_SECONDS" \
        --no-sequential --out "$OUT/engine-$name.json" --markdown "$OUT/tables.md"
}
if want engine; then
    engine encoder-graphs-off --encoder-cuda-graphs off
    if [ "$ENCODER_GRAPHS" = on ]; then
        engine encoder-graphs-on --encoder-cuda-graphs on || ENCODER_GRAPHS=failed
    fi
    engine decoder-graphs-off --encoder-cuda-graphs off --decoder-cuda-graphs off
fi
if [ "$ENCODER_GRAPHS" = failed ]; then
    # Where did it fail? With launches synchronous, the traceback names the failing operation
    # (2026-11-27: an illegal memory access after the buffers grew, 64 -> 512 streams).
    CUDA_LAUNCH_BLOCKING=1 stage engine-encoder-graphs-on-blocking 120 "${STREAMD[@]}" bench engine \
        --model "$MODEL" "${ON_DEVICE[@]}" --encoder-cuda-graphs on --streams 64,512 --chunk-ms 160 \
        --seconds 2 --no-sequential --out "$OUT/engine-encoder-graphs-on-blocking.json"
fi
if want offline && [ -z "$WHISPER_LIKE" ]; then
    echo "offline stage skipped: set WHISPER_LIKE to a Whisper directory (tokenizer and config files)"
elif want offline; then
    OFFLINE="$(dirname "$MODEL")"  # removed at exit: 3 GB of Whisper, 1.3 GB of aligner in float32
    sides=()
    for dtype in $OFFLINE_DTYPES; do
        sides+=(--side "device=$DEVICE,dtype=$dtype")
    done
    stage offline-whisper-model 120 "${STREAMD[@]}" model create-offline --arch whisper-distil-large-v3 \
        --like "$WHISPER_LIKE" --out "$OFFLINE/whisper" \
    && stage offline-aligner-model 120 "${STREAMD[@]}" model create-offline --arch mms-300m-aligner \
        --out "$OFFLINE/aligner" \
    && stage offline 240 "${STREAMD[@]}" bench offline --whisper "$OFFLINE/whisper" --aligner "$OFFLINE/aligner" \
        --audio "$OUT/tones.wav" --transcript abcdefghabcdefgh "${sides[@]}" --out "$OUT/offline.json" \
        --markdown "$OUT/tables.md"
fi
if [ "${EXTRA:-0}" = 1 ]; then
    [ -n "$TONES" ] && stage parity-tones 60 "${STREAMD[@]}" parity rnnt --model "$TONES" --audio "$OUT/tones.wav" \
        --test "device=$DEVICE,dtype=$DTYPE" --out "$OUT/parity-tones.json"
    stage parity-nemotron 90 "${STREAMD[@]}" parity rnnt --model "$MODEL" --audio "$OUT/tones.wav" \
        --test "device=$DEVICE,dtype=$DTYPE" --out "$OUT/parity-nemotron.json"
fi
cat "$OUT/tables.md" "$OUT/stages.txt"
