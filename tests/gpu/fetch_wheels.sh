#!/usr/bin/env bash
# Wheels tests/gpu/check.sh needs on the GPU machine beyond what its image has (KINDS.md's
# package list): Textual and its pure-Python requirements, for the TUI step. Run here,
# where pip reaches the registry; then name .whl in the device call's `carry` (check.sh
# installs them with --no-index into /tmp/site). About 1.3 MB. Everything else the check
# uses (numpy, numba, cuda-bindings, NVRTC, pytest, pytest-xdist, hypothesis, jinja2,
# tokenizers, sentencepiece) is already on that image.
set -eu
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$ROOT/.whl" textual==8.2.8 mdit-py-plugins==0.7.0 platformdirs==4.14.9 linkify-it-py==2.2.0 \
    rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2
ls -l "$ROOT/.whl"
