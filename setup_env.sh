#!/usr/bin/env bash
# Create .venv and install streamd with its dependencies.
#
#   ./setup_env.sh                       # CPU (default): torch==2.13.0, the CPU build from PyTorch's CPU wheel index
#   STREAMD_TORCH=cuda ./setup_env.sh    # the CUDA build of torch from PyPI
#   STREAMD_TORCH=npu  ./setup_env.sh    # Ascend: torch's CPU build + the torch_npu release of that torch
#   STREAMD_TORCH=skip ./setup_env.sh    # keep whatever torch the venv already has
#   STREAMD_SETUP_DRY_RUN=1 ./setup_env.sh   # print the commands that would change anything, run none
#
# STREAMD_TORCH_INDEX overrides the CPU wheel index (default https://download.pytorch.org/whl/cpu); where it
# does not answer within seconds, torch comes from pip's configured index instead, with a message saying so.
# Idempotent: a second run only checks that everything is present (a few seconds).
# Needs no root. Test-only system tools (espeak-ng, sox) are installed by .ci/run.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV="${STREAMD_VENV:-.venv}"
TORCH_VERSION="${STREAMD_TORCH_VERSION:-2.13.0}"
NEMO_VERSION="${STREAMD_NEMO_VERSION:-3.0.0}"
TORCH_KIND="${STREAMD_TORCH:-cpu}"
TORCH_INDEX="${STREAMD_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
DRY_RUN="${STREAMD_SETUP_DRY_RUN:-0}"
# An installed torch_npu makes `import torch` itself fail where the Ascend runtime is not on the
# library path (torch imports device-backend extensions on its own); the checks below import
# torch, and streamd loads torch_npu itself (streamd/__init__.py says more). A user's setting wins.
export TORCH_DEVICE_BACKEND_AUTOLOAD="${TORCH_DEVICE_BACKEND_AUTOLOAD:-0}"

case "$TORCH_KIND" in
    cpu | cuda | npu | skip) ;;
    *) echo "setup_env: STREAMD_TORCH must be cpu, cuda, npu or skip (got '$TORCH_KIND')" >&2; exit 2 ;;
esac

run() {  # run a command, or only print it, quoted for a shell where needed (STREAMD_SETUP_DRY_RUN=1)
    if [ "$DRY_RUN" = 1 ]; then
        local arg line="+"
        for arg in "$@"; do
            if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then line+=" $arg"; else line+=" ${arg@Q}"; fi
        done
        echo "$line"
    else
        "$@"
    fi
}

PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet)

stamp="$VENV/.streamd-setup"
want="torch=$TORCH_KIND-$TORCH_VERSION nemo=$NEMO_VERSION project=$(sha1sum pyproject.toml | cut -c1-12)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PY" -c "import torch, nemo, streamd" 2>/dev/null; then
    echo "setup_env: $VENV is up to date ($want)"
    exit 0
fi

if [ ! -x "$PY" ]; then
    run "$PYTHON" -m venv "$VENV"
fi
run "$PY" -m pip install --quiet --upgrade pip wheel setuptools

index_answers() {  # the index serves torch: a quick look, where pip would retry for minutes
    timeout 15 "$PYTHON" - "$1/torch/" <<'PYCODE'
import sys
import urllib.request

try:
    urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="HEAD"), timeout=5).close()
except Exception as exc:
    sys.exit(f"setup_env: {sys.argv[1]} does not answer ({exc})")
PYCODE
}

torch_cpu_build() {  # the pinned torch, CPU build, is what the venv has
    [ -x "$PY" ] && "$PY" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION'
                                                         or torch.version.cuda is not None)" 2>/dev/null
}

install_torch_cpu() {
    if torch_cpu_build; then
        echo "setup_env: torch $TORCH_VERSION (CPU build) is installed"
        return
    fi
    # PyPI's torch for x86_64 Linux is the CUDA build (several GB); PyTorch's CPU index has the CPU build.
    if index_answers "$TORCH_INDEX"; then
        run "${PIP[@]}" "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX"
    else
        echo "setup_env: installing torch==$TORCH_VERSION from pip's configured index instead; without extra pip" \
             "configuration that is PyPI, whose x86_64 Linux build bundles CUDA (runs on the CPU, several GB)" >&2
        run "${PIP[@]}" "torch==$TORCH_VERSION"
    fi
    run "$PY" -c "import sys, torch; sys.exit(torch.version.cuda is not None)" ||
        echo "setup_env: warning: this torch is a CUDA build, not the CPU build: it runs on the CPU but is several" \
             "GB; once $TORCH_INDEX answers: $PY -m pip install --force-reinstall torch==$TORCH_VERSION" \
             "--index-url $TORCH_INDEX" >&2
}

case "$TORCH_KIND" in
    cpu) install_torch_cpu ;;
    cuda) run "${PIP[@]}" "torch==$TORCH_VERSION" ;;
    npu)
        install_torch_cpu
        # torch_npu X.Y.Z is built for torch X.Y.Z (its post releases too): the release of the pinned torch.
        run "${PIP[@]}" "torch==$TORCH_VERSION" "torch_npu==$TORCH_VERSION.*"
        ;;
    skip) ;;
esac

# A constraint keeps pip from replacing the torch chosen above while resolving NeMo.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
if [ "$TORCH_KIND" = skip ]; then
    "$PY" -c "import torch; print('torch==' + torch.__version__)" > "$constraints"
else
    echo "torch==$TORCH_VERSION" > "$constraints"
fi

run "${PIP[@]}" -c "$constraints" "nemo-toolkit[asr]==$NEMO_VERSION"
run "${PIP[@]}" -c "$constraints" -e ".[test]"

[ "$DRY_RUN" = 1 ] || echo "$want" > "$stamp"
echo "setup_env: ready. Activate with: source $VENV/bin/activate"
if [ "$TORCH_KIND" = npu ]; then
    # The environment check: torch_npu, whether the Ascend runtime loads, the NPUs and their indexes;
    # where the runtime is missing, it ends with the fix (source CANN's set_env.sh).
    run "$PY" -m streamd doctor || echo "setup_env: installed; fix the problems above before using --device npu" >&2
fi
