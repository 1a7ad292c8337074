#!/bin/sh
# pip install into the image's virtual environment (/opt/venv), for the three Dockerfiles' build stages.
#   pip-install.sh torch          torch==2.13.0+cpu: from TORCH_INDEX_URL, or from the wheels in /wheels
#                                 (docker/wheels in the build context) when TORCH_INDEX_URL is empty
#   pip-install.sh ARGS...        pip install ARGS (from PIP_INDEX_URL, pip's default: PyPI)
# An extra CA bundle (a TLS-inspecting proxy's) comes in as the BuildKit secret `ca_bundle`
# (/run/secrets/ca_bundle): it is added to pip's own bundle for this one command, in a file that is
# gone before the layer is written, so no layer keeps it.
set -eu

pip="/opt/venv/bin/python -m pip"
if [ -s /run/secrets/ca_bundle ]; then
    bundle=$(mktemp)
    trap 'rm -f "$bundle"' EXIT
    certifi=$(/opt/venv/bin/python -c 'import pip._vendor.certifi as c; print(c.where())')
    cat "$certifi" /run/secrets/ca_bundle >"$bundle"
    export PIP_CERT="$bundle"
fi

if [ "$*" = torch ]; then
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        $pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0+cpu
    elif ls /wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
        $pip install --find-links /wheels torch==2.13.0+cpu
    else
        echo "TORCH_INDEX_URL is empty and docker/wheels/ holds no torch-2.13.0+cpu wheel" >&2
        exit 1
    fi
else
    $pip install "$@"
fi
