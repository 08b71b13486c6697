#!/usr/bin/env bash
# The test command (README, .ci/run): the Rust workspace's tests, then the Python package's
# pytest suite against the extension module that build produced (crates/tutti-py, loaded from a
# temporary copy of python/tutti), in a test environment with python/requirements-test.txt
# (numpy, pytest, Ray Data, scikit-learn, matplotlib).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tutti/target}"
cargo test --release --workspace
cargo build --release -p tutti-py    # the extension (a cdylib: `cargo test` does not build it)
so="$CARGO_TARGET_DIR/release/lib_tutti.so"
venv="${TUTTI_HOME:-$HOME/.cache/tutti}/venv-test"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q -r python/requirements-test.txt
pkg="$(mktemp -d)"
trap 'rm -rf "$pkg"' EXIT
cp -r python/tutti "$pkg/tutti"
cp "$so" "$pkg/tutti/_tutti.abi3.so"
TUTTI_REQUIRE_RAY=1 PYTHONPATH="$pkg" "$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests
