#!/usr/bin/env bash
# SynthSAEBench from a fresh clone, one command:  bash bench/synthsaebench_setup.sh [bench flags, e.g. --tiny]
# Makes a bench-only venv (sae-lens and eai-sparsify are not saescope dependencies and `make run` never installs
# them), installs saescope into it, then runs bench/synthsaebench.py with the flags given.
# SYNTHSAEBENCH_VENV picks the venv (default .venv-synthsaebench); SAESCOPE_CACHE moves the world/sample cache.
# `--install-only` makes the venv and stops (`make test` uses it to run the tests that need sae_lens).
# The peers are pinned to the versions measured: the world's cache key includes the sae_lens version, so another
# version would rebuild the world (≈ 27 min on two CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SYNTHSAEBENCH_VENV:-.venv-synthsaebench}"
PY="${PY:-python3}"
STAMP="$VENV/.synthsaebench-installed"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
    # through uv where it installs, else pip (scripts/install.sh); torch: the CPU build kept on local disk here
    bash scripts/install.sh "$VENV" torch==2.13.0 sae-lens==6.54.12 eai-sparsify==1.3.3 pytest
    # saescope itself without re-resolving its pins against sae-lens', plus the runtime deps the bench touches
    bash scripts/install.sh "$VENV" --no-deps -e .
    bash scripts/install.sh "$VENV" simple-parsing safetensors tqdm scipy gguf
    "$VENV/bin/python" -c "import sae_lens.synthetic, sparsify, saescope"
    touch "$STAMP"
fi
if [ "${1:-}" = "--install-only" ]; then exit 0; fi
exec "$VENV/bin/python" bench/synthsaebench.py "$@"
