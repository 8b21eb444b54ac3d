#!/usr/bin/env bash
# Build llama.cpp's own HTTP server (llama-server) from the llama-cpp-python sdist that constraints.txt pins,
# so the serve benchmark has a load anchor on the same GGUF. ~10-15 min on 2 cores. Nothing lands in the repo:
# the sdist and the build go to $LLAMA_BUILD_DIR (default ~/.cache/chatpack-llama-server).
#
#   bash benchmarks/build_llama_server.sh            # prints the path of the built binary on its last line
#   LLAMA_BUILD_DIR=/tmp/llama bash benchmarks/build_llama_server.sh
#   TARGETS="llama-server llama-bench llama-quantize" bash benchmarks/build_llama_server.sh   # the full-size peers
#
# The benchmark finds the binary through --llama_server, $LLAMA_SERVER, this default folder, or PATH.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="$(sed -n 's/^llama[-_]cpp[-_]python==\([^ ;#]*\).*/\1/Ip' "$here/constraints.txt" | head -n1)"
version="${version:-0.3.36}"
build_root="${LLAMA_BUILD_DIR:-$HOME/.cache/chatpack-llama-server}"
jobs="${JOBS:-$(nproc)}"
targets="${TARGETS:-llama-server}"
python="${PYTHON:-$here/.venv/bin/python}"
[ -x "$python" ] || python=python3

mkdir -p "$build_root"
cd "$build_root"
sdist="llama_cpp_python-$version.tar.gz"
if [ ! -f "$sdist" ]; then
  "$python" -m pip download --no-deps --no-binary :all: --dest . "llama-cpp-python==$version"
fi
src="llama_cpp_python-$version"
[ -d "$src" ] || tar xzf "$sdist"
cd "$src/vendor/llama.cpp"
cmake -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
# shellcheck disable=SC2086  (one target per word)
cmake --build build --target $targets -j"$jobs"
bin="$(pwd)/build/bin/llama-server"
"$bin" --version 2>&1 | head -n2 || true
echo "$bin"
