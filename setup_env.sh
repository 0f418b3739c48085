#!/usr/bin/env bash
# Create .venv and install streamd with its dependencies.
#
#   ./setup_env.sh                 # CPU: torch==2.13.0 CPU build (default)
#   STREAMD_TORCH=cuda ./setup_env.sh    # CUDA build of torch from PyPI
#   STREAMD_TORCH=npu  ./setup_env.sh    # Ascend: torch CPU build + torch_npu
#   STREAMD_TORCH=skip ./setup_env.sh    # keep whatever torch the venv already has
#
# Idempotent: a second run only checks that everything is present (a few seconds).
# Needs no root. Test-only system tools (espeak-ng, sox) are installed by .ci/run.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV="${STREAMD_VENV:-.venv}"
TORCH_VERSION="${STREAMD_TORCH_VERSION:-2.13.0}"
NEMO_VERSION="${STREAMD_NEMO_VERSION:-3.0.0}"
TORCH_KIND="${STREAMD_TORCH:-cpu}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet)

stamp="$VENV/.streamd-setup"
want="torch=$TORCH_KIND-$TORCH_VERSION nemo=$NEMO_VERSION project=$(sha1sum pyproject.toml | cut -c1-12)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PY" -c "import torch, nemo, streamd" 2>/dev/null; then
    echo "setup_env: $VENV is up to date ($want)"
    exit 0
fi

"$PY" -m pip install --quiet --upgrade pip wheel setuptools

case "$TORCH_KIND" in
    cpu)
        # Pin the exact version first so nothing later pulls a multi-GB CUDA build
        # (on these machines the CPU wheel of this version lies in pip's find-links).
        "${PIP[@]}" "torch==$TORCH_VERSION"
        ;;
    cuda) "${PIP[@]}" "torch==$TORCH_VERSION" ;;
    npu)
        # torch_npu pins the torch release it was built for; install it with that torch.
        "${PIP[@]}" "torch==$TORCH_VERSION" torch_npu
        ;;
    skip) ;;
    *) echo "setup_env: STREAMD_TORCH must be cpu, cuda, npu or skip (got '$TORCH_KIND')" >&2; exit 2 ;;
esac

# A constraint keeps pip from replacing the torch chosen above while resolving NeMo.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
"$PY" -c "import torch; print('torch==' + torch.__version__)" > "$constraints"

"${PIP[@]}" -c "$constraints" "nemo-toolkit[asr]==$NEMO_VERSION"
"${PIP[@]}" -c "$constraints" -e ".[test]"

echo "$want" > "$stamp"
echo "setup_env: ready. Activate with: source $VENV/bin/activate"
