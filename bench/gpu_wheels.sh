#!/usr/bin/env bash
# Companion of bench/gpu_check.sh: download, where PyPI is reachable, exactly the wheels the GPU machine's CUDA image
# lacks (x86-64 Linux, CPython 3.12) into .whl/ (ignored by git; it travels with the working tree).
# The image already holds torch, transformers, safetensors, numpy, tqdm, fastapi, httpx, fsspec, aiohttp, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT -d .whl \
  simple-parsing docstring-parser gguf eai-sparsify schedulefree natsort
ls -la .whl
