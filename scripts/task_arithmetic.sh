#!/usr/bin/env bash
# The task-arithmetic experiment (issue 15; PAPERS.md section 3), end to end and resumable:
#
#   scripts/task_arithmetic.sh [STAGE]     STAGE: train | merge | bench | all (default all)
#
# 1. train: one initialisation (`tutti init --preset small --seed 0` -> $T/models/ta-init), then
#    a speech, a sound and a music student from it (recipes/task-arithmetic/{speech,sound,music}.toml,
#    300 steps each) and the ensemble-distilled baseline with their total budget
#    (ensemble.toml, 900 steps), each exported to $T/models/ta-<name>. Needs the teachers
#    (scripts/fetch_teachers.sh) and the pool (scripts/build_pool.sh). A killed run resumes from
#    its newest checkpoint when the script is started again; finished exports are kept.
# 2. merge: task arithmetic speech + music at l_speech in {0.9, 0.8, 0.5, 0.2, 0.1}
#    (l_music = 1 - l_speech), TIES and DARE of the same two at 0.5 / 0.5, and the three-way
#    task-arithmetic merge (1/3 each), all against ta-init -> $T/models/ta-merge-*.
# 3. bench: every student, merge and the ensemble on the standard suite (last layer) ->
#    $T/results/task_arithmetic.json, and the report with the sweep chart ->
#    $T/results/task_arithmetic.html.
#
# On two CPU cores the training takes ~4 h (1,800 steps at ~6-8 s), the bench ~2.5 h.
# TUTTI_PRECISION=bf16 trains in mixed precision (CPUs with AMX or AVX512-BF16; `tutti distill
# --precision`), ~1.3x faster per step on `small`; a run may resume in either.
set -euo pipefail
cd "$(dirname "$0")/.."
home="${TUTTI_HOME:-$HOME/.cache/tutti}"
export TUTTI_HOME="$home"
stage="${1:-all}"
threads="${TUTTI_THREADS:-2}"
precision=()
[ -n "${TUTTI_PRECISION:-}" ] && precision=(--precision "$TUTTI_PRECISION")
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tutti/target}"
cargo build --release -p tutti-cli
tutti="$CARGO_TARGET_DIR/release/tutti"
models="$home/models"
mkdir -p "$models" "$home/runs" "$home/results"

train() {
  [ -d "$models/ta-init" ] || "$tutti" init --preset small --seed 0 -o "$models/ta-init"
  for name in speech sound music ensemble; do
    local run="$home/runs/ta-$name"
    [ -d "$models/ta-$name" ] && continue
    # A run killed before its first checkpoint has nothing finished: start it again.
    [ -d "$run" ] && [ ! -e "$run/latest" ] && rm -rf "$run"
    if [ -e "$run/latest" ]; then
      "$tutti" --threads "$threads" distill --config "recipes/task-arithmetic/$name.toml" -o "$run" --resume "${precision[@]}"
    else
      "$tutti" --threads "$threads" distill --config "recipes/task-arithmetic/$name.toml" -o "$run" "${precision[@]}"
    fi
    "$tutti" export "$run" -o "$models/ta-$name"
  done
}

merge() {
  local base="$models/ta-init" s="$models/ta-speech" m="$models/ta-music" o="$models/ta-sound"
  for l in 0.9 0.8 0.5 0.2 0.1; do
    local out="$models/ta-merge-sm-$l"
    [ -d "$out" ] || "$tutti" merge --base "$base" --model "$s:$l" --model "$m:$(awk "BEGIN { print 1 - $l }")" -o "$out"
  done
  [ -d "$models/ta-merge-sm-ties" ] || "$tutti" merge --base "$base" --model "$s:0.5" --model "$m:0.5" --method ties --density 0.2 -o "$models/ta-merge-sm-ties"
  [ -d "$models/ta-merge-sm-dare" ] || "$tutti" merge --base "$base" --model "$s:0.5" --model "$m:0.5" --method dare --density 0.5 --seed 0 -o "$models/ta-merge-sm-dare"
  [ -d "$models/ta-merge-three" ] || "$tutti" merge --base "$base" --model "$s:0.3333" --model "$o:0.3333" --model "$m:0.3333" -o "$models/ta-merge-three"
}

bench() {
  local args=(--model "$models/ta-init" --model "$models/ta-ensemble" --model "$models/ta-speech" --model "$models/ta-sound" --model "$models/ta-music")
  for d in "$models"/ta-merge-*; do args+=(--model "$d"); done
  "$tutti" --threads "$threads" bench --suite "$home/suite" --layers last "${args[@]}" -o "$home/results/task_arithmetic.json"
  "$tutti" report "$home/results/task_arithmetic.json" -o "$home/results/task_arithmetic.html"
}

case "$stage" in
  train) train ;;
  merge) merge ;;
  bench) bench ;;
  all) train; merge; bench ;;
  *) echo "unknown stage $stage (train | merge | bench | all)" >&2; exit 2 ;;
esac
