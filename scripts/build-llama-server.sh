#!/usr/bin/env bash
# Builds llama.cpp's own C++ server, `llama-server`, from the llama.cpp sources that
# llama-cpp-python's sdist vendors (vendor/llama.cpp), at the version the project pins
# (the `local` extra in pyproject.toml; LLAMA_CPP_PYTHON_VERSION overrides it). Only PyPI
# is used: pip downloads the sdist.
#
# The binary is cached outside the repo, so a rerun is instant:
#   ${XDG_CACHE_HOME:-~/.cache}/meshgate/llama-server-<version>/llama-server
# It prints that path on stdout (and nothing else), so that a caller can do
#   export LLAMA_SERVER_BIN=$(scripts/build-llama-server.sh)
# Progress and errors go to stderr; on a failure the build directory is kept and named.
# A portable build (GGML_NATIVE=OFF): a -march=native one dies with SIGILL on hosts whose
# CPU advertises instructions (AMX) the hypervisor does not let a process use. Static
# (BUILD_SHARED_LIBS=OFF), so the binary needs no libllama.so beside it. The compiler runs
# under `nice -n 10` with LLAMA_BUILD_JOBS jobs (default 2). A cold build takes about
# 16 minutes of CPU: 34.6 minutes of wall time on 2 cores shared with other work (load 12).
set -euo pipefail

say() { echo "build-llama-server: $*" >&2; }
die() { say "error: $*"; exit 1; }

main() {  # one function, read whole before it runs: editing this file mid-build is safe
  local root pin version jobs cache binary python work started sdist src built
  root=$(cd "$(dirname "$0")/.." && pwd)
  pin=$(sed -n 's/.*"llama-cpp-python\[server\]==\([0-9A-Za-z.]*\)".*/\1/p' "$root/pyproject.toml")
  version=${LLAMA_CPP_PYTHON_VERSION:-$pin}
  [ -n "$version" ] || die "pyproject.toml pins no llama-cpp-python[server]==VERSION"
  jobs=${LLAMA_BUILD_JOBS:-2}
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/meshgate/llama-server-$version
  binary=$cache/llama-server

  if [ -x "$binary" ] && "$binary" --version >/dev/null 2>&1; then
    echo "$binary"
    return 0
  fi
  for tool in cmake c++ tar; do
    command -v "$tool" >/dev/null || die "$tool is not on PATH (apt-get install cmake g++)"
  done
  python=${PYTHON:-python3}
  if [ -x "$root/.venv/bin/python" ]; then python=$root/.venv/bin/python; fi

  work=$(mktemp -d "${TMPDIR:-/tmp}/meshgate-llama-server.XXXXXX")
  started=$(date +%s)
  say "downloading the llama-cpp-python $version sdist from PyPI"
  "$python" -m pip download --quiet --disable-pip-version-check --no-binary :all: --no-deps \
    --dest "$work" "llama-cpp-python==$version" >&2 \
    || die "pip could not download the llama-cpp-python==$version sdist (kept $work)"
  sdist=$(ls "$work"/llama_cpp_python-"$version".tar.gz) || die "no sdist in $work"
  tar -xzf "$sdist" -C "$work"
  src=$work/llama_cpp_python-$version/vendor/llama.cpp
  [ -f "$src/CMakeLists.txt" ] || die "the sdist vendors no llama.cpp ($src)"
  say "configuring $src"
  nice -n 10 cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    >"$work/configure.log" 2>&1 \
    || { tail -n 40 "$work/configure.log" >&2; die "cmake configure failed (log: $work/configure.log)"; }
  say "building the llama-server target with $jobs jobs (about 25 minutes on 2 busy cores)"
  nice -n 10 cmake --build "$work/build" --target llama-server -j "$jobs" >"$work/build.log" 2>&1 \
    || { tail -n 60 "$work/build.log" >&2; die "cmake build failed (log: $work/build.log)"; }
  built=$work/build/bin/llama-server
  [ -x "$built" ] || die "the build made no $built"
  "$built" --version >/dev/null 2>&1 || die "the built $built does not run (--version failed)"
  mkdir -p "$cache"
  # Copy then rename: a concurrent or interrupted run never leaves a half-written binary.
  cp "$built" "$binary.tmp.$$"
  mv -f "$binary.tmp.$$" "$binary"
  rm -rf "$work"
  say "built $binary in $(($(date +%s) - started)) s"
  echo "$binary"
}

main "$@"
exit
