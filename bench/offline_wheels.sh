#!/usr/bin/env bash
# Wheels streamd needs on a GPU machine that has CUDA PyTorch (and the usual scientific stack:
# numpy, scipy, transformers, lightning-utilities, ...) but no package index, for Python 3.12:
#
#   bench/offline_wheels.sh DIR        # here, with an index; then on the GPU machine:
#   pip install --no-index --no-deps --target /tmp/site DIR/*.whl && export PYTHONPATH=/tmp/site
#
# The list is what `import streamd, nemo.collections.asr` and the bench/serve paths load that a
# CUDA PyTorch image lacks (measured 2026-11-26 against one such image). nv_one_logger is left
# out on purpose: streamd's shim stands in for it. lightning is pinned to what NeMo 3.0 allows.
set -euo pipefail
DIR="${1:?usage: bench/offline_wheels.sh DIR}"
PY="${PY:-python3}"
mkdir -p "$DIR"
platforms=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
    platforms+=(--platform "${p}_x86_64")
done
packages=(
    nemo-toolkit==3.0.0 lightning==2.4.0 hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3
    lhotse==1.33.0 librosa==0.11.0 audioread pooch decorator platformdirs soundfile soxr
    kaldialign cytoolz intervaltree datasets dill multiprocess braceexpand webdataset
    aistore smart_open text-unidecode whisper_normalizer indic_numtowords more-itertools StrEnum
    pydantic pydantic_core annotated-types typing-inspection overrides sniffio toml cffi pycparser
    websockets structlog
)
for package in "${packages[@]}"; do
    # antlr4 4.9.3 is published as a source distribution only: build its (pure Python) wheel.
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$DIR" "$package" 2>/dev/null \
        || "$PY" -m pip wheel -q --no-deps -w "$DIR" "$package"
done
"$PY" -m pip wheel -q --no-deps -w "$DIR" "$(cd "$(dirname "$0")/.." && pwd)"  # streamd itself
ls "$DIR"
