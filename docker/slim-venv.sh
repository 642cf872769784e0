#!/bin/sh
# Remove from a finished venv what only building or testing needs, before it is copied into the
# final image. Every item is something the trainer and the service never import at run time.
set -eu
venv=$1
site=$(echo "$venv"/lib/python3*/site-packages)

# TensorFlow's C++ headers (~290 MB), for compiling custom ops only.
rm -rf "$site/tensorflow/include"
# TensorFlow's own shared libraries ship with their symbol tables (~170 MB); the dynamic
# symbols stay. Only these two: other wheels' libraries were rewritten by auditwheel's patchelf,
# which `strip` is known to corrupt.
strip --strip-unneeded "$site"/tensorflow/libtensorflow_cc.so.* "$site"/tensorflow/libtensorflow_framework.so.*
# libclang (~60 MB): a build-time requirement of TensorFlow's wheel; nothing imports `clang`.
rm -rf "$site/clang" "$site"/libclang-*.dist-info
# Test suites shipped inside packages (pandas alone ~45 MB).
find "$site" -type d -name tests -prune -exec rm -rf {} +
# The installer itself: the image never installs anything after this stage.
"$venv/bin/python" -m pip uninstall -q -y pip
