#!/usr/bin/env bash
# The main job on the embedded default: build tutti, make the default model if there is none,
# embed the bundled examples, and show what came out.
#
# NOTE: until a trained tutti model ships, the default model is a freshly initialised `small`
# encoder (seed 0). Its weights are UNTRAINED: the pipeline is real, the embeddings carry no
# learned information.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tutti/target}"
cargo build --release -p tutti-cli
tutti="$CARGO_TARGET_DIR/release/tutti"
model="${TUTTI_HOME:-$HOME/.cache/tutti}/models/default"
if [ ! -d "$model" ]; then
  "$tutti" init --preset small --seed 0 -o "$model"
fi
"$tutti" info "$model"
out="${1:-embeddings}"
"$tutti" embed examples/audio -o "$out" --model "$model" --overwrite
"$tutti" embed examples/audio -o "$out/frames" --model "$model" --pool none --layer all --overwrite
ls -l "$out" "$out/frames"
