#!/usr/bin/env bash
# Create .venv at the repo root and install leanspike with its test extra (plots, images, the
# peers the tests compare against).
# torch is installed first, pinned to the CPU build on disk (torch==2.13.0), so that no
# CUDA packages are pulled on a CPU machine. GPU users override it, e.g.
#   LEANSPIKE_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126" bash scripts/bootstrap.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check ${LEANSPIKE_TORCH:-torch==2.13.0}
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
# SpikingJelly without its declared requirements (they pull a CUDA torch and torchvision): the
# tests compare leanspike's gradients with its neurons' (tests/test_peers_agree.py)
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps spikingjelly==2.0.0
