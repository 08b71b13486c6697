#!/usr/bin/env bash
# The Python package's measurements (issue 19; README, Python): call overhead against the CLI on
# the same clips and threads, the fixed cost of one call, and Ray Data with one and two actors.
#
#   scripts/bench_python.sh [CLIPS_PER_DOMAIN]     (default 20: 60 pool clips of 10 s)
#
# Uses the test environment of scripts/test.sh ($TUTTI_HOME/venv-test with
# python/requirements-test.txt) and the extension the release build makes; the clips come from
# the distillation pool (scripts/build_pool.sh), the model is $TUTTI_HOME/models/default (made as
# quickstart.sh makes it when missing). Writes $TUTTI_HOME/results/python_bench.json.
set -euo pipefail
cd "$(dirname "$0")/.."
home="${TUTTI_HOME:-$HOME/.cache/tutti}"
export TUTTI_HOME="$home"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tutti/target}"
per="${1:-20}"
cargo build --release -p tutti-cli -p tutti-py
tutti="$CARGO_TARGET_DIR/release/tutti"
model="$home/models/default"
[ -d "$model" ] || "$tutti" init --preset small --seed 0 -o "$model"
venv="$home/venv-test"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q -r python/requirements-test.txt
pkg="$(mktemp -d)"
trap 'rm -rf "$pkg"' EXIT
cp -r python/tutti "$pkg/tutti"
cp "$CARGO_TARGET_DIR/release/lib_tutti.so" "$pkg/tutti/_tutti.abi3.so"
clips="$pkg/clips.txt"
for d in speech sound music; do
  find "$home/pool/audio/$d" -name '*.wav' | sort | awk -v n="$per" 'NR <= n'
done > "$clips"
mkdir -p "$home/results"
PYTHONPATH="$pkg" "$venv/bin/python" python/bench/bench_python.py --tutti "$tutti" --model "$model" \
  --clips "$clips" --threads "${TUTTI_THREADS:-2}" --ray --out "$home/results/python_bench.json"
