#!/usr/bin/env bash
# Create (once) the reference Python environment used by the interoperability tests and the
# benchmarks: PyTorch, Hugging Face transformers, safetensors and numpy from PyPI, and
# scikit-learn and SciPy for the metric tests and compressed-tensors for loading int8 exports
# in transformers (added on top of an existing environment, so
# adding them does not download torch again). It lives
# outside the checkout (the torch wheels are several GB) and is reused while it is complete.
#
#   scripts/reference-env.sh          # prints the environment's python interpreter
#
# SECATEUR_REFENV overrides the location (default: ~/.cache/secateur/refenv).
set -euo pipefail

ENV_DIR="${SECATEUR_REFENV:-$HOME/.cache/secateur/refenv}"
PACKAGES=(torch==2.15.0 transformers==5.24.0 safetensors numpy)
STAMP="$ENV_DIR/.complete-$(printf '%s ' "${PACKAGES[@]}" | sha256sum | cut -c1-16)"

if [ ! -f "$STAMP" ]; then
    mkdir -p "$(dirname "$ENV_DIR")"
    exec 9>"$ENV_DIR.lock"
    flock 9
    if [ ! -f "$STAMP" ]; then
        echo "creating the reference environment in $ENV_DIR (torch is a large download)" >&2
        rm -rf "$ENV_DIR"
        python3 -m venv "$ENV_DIR"
        "$ENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}" >&2
        "$ENV_DIR/bin/python" -c "import torch, transformers, safetensors, numpy" >&2
        touch "$STAMP"
    fi
fi
EXTRAS=(scikit-learn scipy compressed-tensors==0.20.1)
EXTRA_STAMP="$ENV_DIR/.extras-$(printf '%s ' "${EXTRAS[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$EXTRA_STAMP" ]; then
    exec 9>"$ENV_DIR.lock"
    flock 9
    if [ ! -f "$EXTRA_STAMP" ]; then
        "$ENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check "${EXTRAS[@]}" >&2
        "$ENV_DIR/bin/python" -c "import sklearn, scipy, compressed_tensors" >&2
        touch "$EXTRA_STAMP"
    fi
fi
echo "$ENV_DIR/bin/python"
