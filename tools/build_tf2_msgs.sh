#!/usr/bin/env bash
# Generate tf2_msgs (TFMessage) and install it into a Python venv holding the ROS 2 wheels.
#
# Usage: tools/build_tf2_msgs.sh VENV_DIR
#
# tf2_msgs has no wheel on PyPI; without it /tf and /tf_static cannot be subscribed.
# The message built here has the upstream definition, so its type hash equals upstream's.
# Does nothing when tf2_msgs already imports, or when a ROS install is sourced (ROS_DISTRO),
# whose own tf2_msgs must be used instead. Needs cmake, make, a C/C++ compiler and the
# Python headers. The ROS 2 wheels under-declare their build dependencies and export the
# include dirs of the machine that built them: the steps below make up for both.
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: $0 VENV_DIR" >&2
    exit 2
fi
if [ -n "${ROS_DISTRO:-}" ]; then
    echo "build_tf2_msgs: ROS_DISTRO=${ROS_DISTRO} is sourced; use its tf2_msgs" \
         "(apt install ros-${ROS_DISTRO}-tf2-msgs), not building." >&2
    exit 0
fi

VENV_DIR="$(cd "$1" && pwd)"
PYTHON="${VENV_DIR}/bin/python"
if [ ! -x "${PYTHON}" ]; then
    echo "build_tf2_msgs: ${PYTHON} not found; VENV_DIR must be a Python venv" >&2
    exit 2
fi
if ! "${PYTHON}" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
    echo "build_tf2_msgs: ${VENV_DIR} is not a virtual environment (the ROS 2 wheels" \
         "only work inside one)" >&2
    exit 2
fi
if "${PYTHON}" -c 'import tf2_msgs.msg' 2>/dev/null; then
    echo "build_tf2_msgs: tf2_msgs already importable in ${VENV_DIR}"
    exit 0
fi
for tool in cmake make c++; do
    if ! command -v "${tool}" >/dev/null; then
        echo "build_tf2_msgs: '${tool}' is required (apt install cmake g++ make)" >&2
        exit 1
    fi
done

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"${PYTHON}" -m pip install --quiet -r "${REPO_DIR}/requirements/tf2_msgs-build.txt"

# The wheels find their CMake configs, executables and libraries through the venv.
export VIRTUAL_ENV="${VENV_DIR}"
export PATH="${VENV_DIR}/bin:${PATH}"
export AMENT_PREFIX_PATH="${VENV_DIR}"

# The wheels' exported Python targets name include dirs of the machine that built them;
# point them at this interpreter's headers and numpy (idempotent: only missing dirs change).
"${PYTHON}" - "${VENV_DIR}" <<'EOF'
import glob
import os
import re
import sys
import sysconfig

import numpy

python_include = sysconfig.get_paths()['include']
numpy_include = numpy.get_include()
pattern = re.compile(r'INTERFACE_INCLUDE_DIRECTORIES "([^"]*)"')


def local_dir(path):
    if os.path.isdir(path):
        return path
    if re.search(r'/include/python3\.\d+$', path):
        return python_include
    if re.search(r'/numpy/(_core|core)/include$', path):
        return numpy_include
    return path


def fix(match):
    dirs = [local_dir(path) for path in match.group(1).split(';')]
    return 'INTERFACE_INCLUDE_DIRECTORIES "%s"' % ';'.join(dirs)


glob_pattern = os.path.join(sys.argv[1], 'share', '*', 'cmake',
                            'export_*__rosidl_generator_pyExport.cmake')
for export_file in glob.glob(glob_pattern):
    with open(export_file) as stream:
        text = stream.read()
    fixed = pattern.sub(fix, text)
    if fixed != text:
        temp_file = export_file + '.tmp'
        with open(temp_file, 'w') as stream:
            stream.write(fixed)
        os.replace(temp_file, export_file)
EOF

BUILD_DIR="$(mktemp -d -t tf2_msgs_build.XXXXXX)"
trap 'rm -rf "${BUILD_DIR}"' EXIT
cmake -S "${REPO_DIR}/tools/tf2_msgs" -B "${BUILD_DIR}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="${VENV_DIR}" \
    -DPython3_EXECUTABLE="${PYTHON}" \
    -DBUILD_TESTING=OFF > "${BUILD_DIR}/configure.log" 2>&1 \
    || { cat "${BUILD_DIR}/configure.log" >&2; exit 1; }
cmake --build "${BUILD_DIR}" --parallel "$(nproc)" > "${BUILD_DIR}/build.log" 2>&1 \
    || { tail -n 60 "${BUILD_DIR}/build.log" >&2; exit 1; }
cmake --install "${BUILD_DIR}" > "${BUILD_DIR}/install.log" 2>&1 \
    || { tail -n 60 "${BUILD_DIR}/install.log" >&2; exit 1; }

"${PYTHON}" -c 'import tf2_msgs.msg; tf2_msgs.msg.TFMessage()'
echo "build_tf2_msgs: tf2_msgs installed into ${VENV_DIR}"
