#!/bin/sh
# The images' Python layer, one script for both Dockerfiles (the CPU image's is built and run in
# tests/test_docker_image.py; the GPU image runs the same steps on its NGC base):
#   install-python.sh requirements FILE   a venv from the base's interpreter (the one whose shared
#                                          libpython the Triton stub loads), torch from
#                                          TORCH_INDEX_URL when set (the CPU build), the pins of FILE
#   install-python.sh extra INDEX PKG...   packages from one more index (the GPU image's TensorRT)
#   install-python.sh project             this project and its client, without dependencies
# docker/build-extras/ may hold a CA bundle (ca-bundle.crt) and wheels pip takes before an index.
set -eu
extras="$(dirname "$0")/build-extras"
if [ -f "$extras/ca-bundle.crt" ]; then
    export PIP_CERT="$extras/ca-bundle.crt"
fi
case "$1" in
    requirements)
        "$PYTHON" -m venv /opt/venv
        if [ -n "${TORCH_INDEX_URL:-}" ]; then
            pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" --find-links "$extras" "torch==$TORCH_VERSION"
        fi
        pip install --no-cache-dir --find-links "$extras" --requirement "$2" ;;
    extra)
        index="$2"
        shift 2
        pip install --no-cache-dir --extra-index-url "$index" --find-links "$extras" "$@" ;;
    project)
        pip install --no-cache-dir --no-deps ./client . ;;
    *)
        echo "usage: install-python.sh requirements FILE | extra INDEX PACKAGE... | project" >&2
        exit 2 ;;
esac
