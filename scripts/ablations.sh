#!/usr/bin/env bash
# The distillation ablations at small scale (issue 14; README, Distillation), resumable:
#
#   scripts/ablations.sh NAME...      NAME: a recipe in recipes/ablations (base, w1, no-music,
#                                     k-all, crepe, crepe-b20, crepe-b10,
#                                     keep, stage2, whisper, whisper-keep, whisper-keep-all);
#                                     default: base keep crepe w1 no-music k-all stage2
#
# For each: `tutti distill` (resumed from its newest checkpoint when the script is started
# again), `tutti export` to $T/models/abl-NAME, then the standard suite on its last layer ->
# $T/results/abl/NAME.json. `stage2` starts from abl-base, so it runs after base. `keep` starts
# from $T/models/random-small, which is created if missing (tutti init --preset small --seed 0).
# Needs the teachers (scripts/fetch_teachers.sh), the pool (scripts/build_pool.sh) and the suite
# (scripts/build_suite.sh). TUTTI_THREADS (default 2) is passed to every command, so two
# instances can share two cores with TUTTI_THREADS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
home="${TUTTI_HOME:-$HOME/.cache/tutti}"
export TUTTI_HOME="$home"
threads="${TUTTI_THREADS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tutti/target}"
cargo build --release -p tutti-cli
tutti="$CARGO_TARGET_DIR/release/tutti"
models="$home/models"
mkdir -p "$models" "$home/runs" "$home/results/abl"
if [ ! -d "$models/random-small" ]; then
  # Written beside and renamed, so two instances started together cannot race on it.
  tmp="$models/.random-small.$$"
  "$tutti" init --preset small --seed 0 -o "$tmp"
  mv -T "$tmp" "$models/random-small" 2>/dev/null || rm -rf "$tmp"
fi

names=("$@")
[ ${#names[@]} -eq 0 ] && names=(base keep crepe w1 no-music k-all stage2)
for name in "${names[@]}"; do
  recipe="recipes/ablations/$name.toml"
  [ -f "$recipe" ] || { echo "no recipe $recipe" >&2; exit 2; }
  run="$home/runs/abl-$name"
  model="$models/abl-$name"
  if [ ! -d "$model" ]; then
    # A run killed before its first checkpoint has nothing finished: start it again.
    [ -d "$run" ] && [ ! -e "$run/latest" ] && rm -rf "$run"
    if [ -e "$run/latest" ]; then
      "$tutti" --threads "$threads" distill --config "$recipe" -o "$run" --resume
    else
      "$tutti" --threads "$threads" distill --config "$recipe" -o "$run"
    fi
    "$tutti" export "$run" -o "$model"
  fi
  out="$home/results/abl/$name.json"
  [ -s "$out" ] || "$tutti" --threads "$threads" bench --suite "$home/suite" --layers last --model "$model" -o "$out"
done
