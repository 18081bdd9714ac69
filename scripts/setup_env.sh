#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and installs everything the demo and the tests
# need: the CPU build of torch 2.13.0, the project built against it, TorchServe, test tools.
# Usage: source scripts/setup_env.sh   (sets FUSEDBERT_PY to the venv's python)
# FUSEDBERT_VENV picks the venv's folder (default: .venv in the checkout).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FUSEDBERT_VENV:-$repo/.venv}"
step() { printf '\n==> %s\n' "$*"; }

if ! command -v java >/dev/null 2>&1 || ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|2[0-9])'; then
  step "installing Java 17 for TorchServe's frontend"
  apt-get update -q && apt-get install -y -q openjdk-17-jre-headless
fi
if [ ! -x "$venv/bin/python" ]; then
  step "creating $venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
step "installing torch 2.13.0 (CPU build) and build tools"
"$py" -m pip install -q --upgrade pip "setuptools>=80" wheel ninja
# Named first and alone, so no later requirement can pull a CUDA build of torch onto a CPU machine.
"$py" -m pip install -q "torch==2.13.0"
step "building fusedbert's op library against it and installing the project"
"$py" -m pip install -q --no-build-isolation -e "$repo[serve,test,bench]"
export FUSEDBERT_PY="$py"
