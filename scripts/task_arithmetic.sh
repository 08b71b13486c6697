#!/usr/bin/env bash
# The task-arithmetic experiment (issue 15; PAPERS.md section 3), end to end and resumable:
#
#   scripts/task_arithmetic.sh [STAGE]     STAGE: train | merge | bench | all (default all)
#
# 1. train: one initialisation (`tutti init --preset small --seed 0` -> $T/models/ta-init), then
#    a speech, a sound and a music student from it (recipes/task-arithmetic/{speech,sound,music}.toml,
#    150 steps each) and the ensemble-distilled baseline with their total budget
#    (ensemble.toml, 450 steps), each exported to $T/models/ta-<name>. Needs the teachers
#    (scripts/fetch_teachers.sh) and the pool (scripts/build_pool.sh). A killed run resumes from
#    its newest checkpoint when the script is started again; finished exports are kept.
# 2. merge: task arithmetic speech + music at l_speech in {0.9, 0.8, 0.5, 0.2, 0.1}
#    (l_music = 1 - l_speech), TIES and DARE of the same two at 0.5 / 0.5, and the three-way
#    task-arithmetic merge (1/3 each), all against ta-init -> $T/models/ta-merge-*.
# 3. bench: every student, merge and the ensemble on the standard suite (last layer) ->
#    $T/results/ta/<model>.json, joined into $T/results/task_arithmetic.json, and the report with
#    the sweep chart ->
#    $T/results/task_arithmetic.html.
#
# On two CPU cores (Intel Xeon, AMX, bf16) the training took 53 min (speech 11, sound 7, music 7,
# ensemble 28 min) and each model's bench ~7-11 min (13 models).
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
    # f32: the merges need the base's dtype (`tutti init` writes f32), and f16 rounding (up to
    # 5e-4 of each weight) would blur the short runs' task vectors.
    "$tutti" export "$run" --dtype f32 -o "$models/ta-$name"
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
  # One bench run per model (a killed bench loses only the model it was on; the embedding cache
  # keeps its finished splits), joined into one results file and report.
  local names=(ta-init ta-ensemble ta-speech ta-sound ta-music) files=()
  for d in "$models"/ta-merge-*; do names+=("$(basename "$d")"); done
  mkdir -p "$home/results/ta"
  for name in "${names[@]}"; do
    local out="$home/results/ta/$name.json"
    [ -s "$out" ] || "$tutti" --threads "$threads" bench --suite "$home/suite" --layers last --model "$models/$name" -o "$out"
    files+=("$out")
  done
  "$tutti" report "${files[@]}" --joined "$home/results/task_arithmetic.json" -o "$home/results/task_arithmetic.html"
}

case "$stage" in
  train) train ;;
  merge) merge ;;
  bench) bench ;;
  all) train; merge; bench ;;
  *) echo "unknown stage $stage (train | merge | bench | all)" >&2; exit 2 ;;
esac
