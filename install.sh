#!/usr/bin/env bash
# One-step set-up on a fresh Debian machine: GL libraries for offscreen rendering, the right torch
# build, then this package in editable mode. Extras (e.g. "test") are passed as arguments.
#   ./install.sh            # runtime
#   ./install.sh test       # runtime + test tools
# torch: with an NVIDIA driver present (nvidia-smi works) the default PyPI build (CUDA) is used;
# otherwise torch==2.13.0 (a CPU build where the pip index offers one, as on the development
# machines; plain PyPI's Linux wheel is a CUDA build). Set TORCH_SPEC to override, and PIP_INDEX_URL
# for where from (https://download.pytorch.org/whl/cpu for PyTorch's CPU builds).
set -euo pipefail
cd "$(dirname "$0")"

missing=()
for lib in libEGL.so.1 libGL.so.1 libOSMesa.so.8; do
    ldconfig -p | grep -q "$lib" || missing+=("$lib")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install.sh: installing GL libraries (${missing[*]} missing)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libegl1 libgl1 libosmesa6 >/dev/null
fi

if [ -z "${TORCH_SPEC:-}" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
        TORCH_SPEC="torch"
    else
        TORCH_SPEC="torch==2.13.0"
    fi
fi
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q "$TORCH_SPEC"

extras=""
[ $# -gt 0 ] && extras="[$(IFS=,; echo "$*")]"
python3 -m pip install -q -e ".${extras}"
