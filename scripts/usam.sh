#!/usr/bin/env bash
# U-SAM (issue 18; PAPERS.md section 6), end to end and resumable:
#
#   scripts/usam.sh [STAGE]     STAGE: train | eval | table | all (default all)
#
# 1. train: each recipe of recipes/usam/ (the full model and its ablations: one projector, no
#    contrastive loss, each encoder alone; then the per-token |S|_1 and LoRA variants) -> $T/runs/usam/<name> -> $T/models/<name> (an audio-LM
#    `tutti ask` runs). Needs the teachers (scripts/fetch_teachers.sh), the LM and the sentence
#    encoder (scripts/fetch_lm.sh) and the instruction data (scripts/uniwhisper.sh data). A killed
#    run resumes from its newest checkpoint when the script is started again; finished exports
#    are kept.
# 2. eval: each exported model (and the UniWhisper model $T/models/uw-speech when it exists) on
#    the held-out instruction test set (30 pairs per task) -> $T/results/usam/<name>.json.
# 3. table: the comparison table (accuracy per task, WER, router weights per task) as markdown ->
#    $T/results/usam/table.md (`tutti instruct table`), and each routed model's router chart ->
#    $T/results/usam/<name>-router.html.
#
# USAM_ONLY="usam usam-no-sacl" limits the recipes trained and evaluated.
set -euo pipefail
cd "$(dirname "$0")/.."
home="${TUTTI_HOME:-$HOME/.cache/tutti}"
export TUTTI_HOME="$home"
stage="${1:-all}"
threads="${TUTTI_THREADS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tutti/target}"
cargo build --release -p tutti-cli
tutti="$CARGO_TARGET_DIR/release/tutti"
mkdir -p "$home/runs/usam" "$home/models" "$home/results/usam"
names="${USAM_ONLY:-usam usam-one-projector usam-no-sacl usam-whisper usam-yamnet usam-musicnn usam-l1-mean usam-lora}"

train() {
  for name in $names; do
    local run="$home/runs/usam/$name" model="$home/models/$name"
    [ -d "$model" ] && continue
    [ -d "$run" ] && [ ! -e "$run/latest" ] && rm -rf "$run"
    if [ -e "$run/latest" ]; then
      "$tutti" --threads "$threads" align -o "$run" --resume
    else
      "$tutti" --threads "$threads" align --config "recipes/usam/$name.toml" -o "$run"
    fi
    "$tutti" export "$run" -o "$model"
  done
}

eval_() {
  local models="$names"
  [ -d "$home/models/uw-speech" ] && models="$models uw-speech"
  for name in $models; do
    local out="$home/results/usam/$name.json"
    [ -f "$out" ] && continue
    [ -d "$home/models/$name" ] || { echo "skipping $name: not trained" >&2; continue; }
    "$tutti" --threads "$threads" instruct eval --model "$home/models/$name" --data "$home/instruct" \
      --per-task 30 -o "$out"
  done
}

table() {
  local reports=()
  for f in "$home"/results/usam/*.json; do reports+=("$(basename "$f" .json)=$f"); done
  "$tutti" instruct table "${reports[@]}" --router-html "$home/results/usam" > "$home/results/usam/table.md"
  cat "$home/results/usam/table.md"
}

case "$stage" in
  train) train ;;
  eval) eval_ ;;
  table) table ;;
  all) train; eval_; table ;;
  *) echo "unknown stage $stage (train | eval | table | all)" >&2; exit 2 ;;
esac
