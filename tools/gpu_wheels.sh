#!/bin/sh
# Download, on a machine that reaches a package registry, the wheels that tools/gpu_check installs
# on a GPU machine that reaches none (docs/gpu.md):
#
#     tools/gpu_wheels.sh            # the core set into gpu-wheels/ (about 26 MB; .gitignore'd)
#     tools/gpu_wheels.sh --all      # + rosbags, onnx, onnxscript, onnxruntime, hdf5plugin and
#                                    #   their dependencies (about 110 MB)
#
# Such a machine holds its own Python (say 3.12 with torch + CUDA, numba, numpy, h5py and
# opencv-python-headless) and lacks what evstream adds: pyzmq and dv-processing (every pipeline
# and every .aedat4), tqdm (progress), setuptools (to install evstream from the source tree).
# That core set is what tools/gpu_check needs. The rest of pyproject's dependencies serve
# commands the check does not run (ROS bags, ONNX, DSEC's compressed .h5); --all fetches them
# too, except numpy and h5py, which such a machine has. The core set fits the 64 MiB a device
# run may carry; --all does not.
#
# Environment: PYTHON_VERSION (default 3.12), DEST (default gpu-wheels), PIP (default: this
# checkout's .venv pip, else python3 -m pip). Wheels are binary only, CPython, manylinux x86_64.
set -eu
cd "$(dirname "$0")/.."
PYVER=${PYTHON_VERSION:-3.12}
DEST=${DEST:-gpu-wheels}
if [ -z "${PIP:-}" ]; then
    if [ -x .venv/bin/python ]; then PIP=".venv/bin/python -m pip"; else PIP="python3 -m pip"; fi
fi
CORE="pyzmq dv-processing tqdm setuptools"
EXTRA="rosbags onnx onnxscript onnxruntime hdf5plugin"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"

fetch() {   # fetch DEPS_FLAG PACKAGES...
    deps=$1; shift
    # shellcheck disable=SC2086
    $PIP download -q --disable-pip-version-check --python-version "$PYVER" \
        --implementation cp --only-binary=:all: $PLATFORMS $deps -d "$DEST" "$@"
}

mkdir -p "$DEST"
fetch --no-deps $CORE                     # none of the four needs more than numpy
case "${1:-}" in
    --all) fetch "" $EXTRA
           rm -f "$DEST"/numpy-*.whl "$DEST"/h5py-*.whl ;;     # the GPU machine has these
    "") ;;
    *) echo "usage: tools/gpu_wheels.sh [--all]" >&2; exit 2 ;;
esac
echo "python $PYVER wheels in $DEST/:"
ls -l "$DEST"/*.whl | awk '{printf "  %8.1f MB  %s\n", $5 / 1048576, $NF}'
du -sh "$DEST" | awk '{print "  total " $1}'
