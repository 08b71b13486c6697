#!/usr/bin/env bash
# UniWhisper on tutti's data (issue 17; PAPERS.md section 4), end to end and resumable:
#
#   scripts/uniwhisper.sh [STAGE]     STAGE: data | train | eval | bench | all (default all)
#
# 1. data: instruction pairs from the pool (`tutti instruct build`, checked against the suite)
#    -> $T/instruct. Needs scripts/build_pool.sh and scripts/build_suite.sh.
# 2. train: `tutti align` with recipes/uniwhisper/speech-student.toml (the encoder is the task
#    arithmetic experiment's speech student: scripts/task_arithmetic.sh train; the LM comes from
#    scripts/fetch_lm.sh) -> $T/runs/uw-speech, exported to $T/models/uw-speech (audio-LM) whose
#    encoder/ is a normal model folder. A killed run resumes from its newest checkpoint.
# 3. eval: the audio-LM on the held-out instruction pairs (exact match per task, WER, the held-out
#    task zero-shot) -> $T/results/uniwhisper_instruct.json, and a few answers from `tutti ask`.
# 4. bench: the encoder before and after on the standard suite -> $T/results/uniwhisper.json.
set -euo pipefail
cd "$(dirname "$0")/.."
home="${TUTTI_HOME:-$HOME/.cache/tutti}"
export TUTTI_HOME="$home"
stage="${1:-all}"
threads="${TUTTI_THREADS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tutti/target}"
cargo build --release -p tutti-cli
tutti="$CARGO_TARGET_DIR/release/tutti"
run="$home/runs/uw-speech"
model="$home/models/uw-speech"
mkdir -p "$home/runs" "$home/models" "$home/results"

data() {
  [ -f "$home/instruct/summary.json" ] || "$tutti" instruct build --pool "$home/pool" -o "$home/instruct" --suite "$home/suite"
  "$tutti" instruct check --data "$home/instruct" --suite "$home/suite"
}

train() {
  [ -d "$home/models/ta-speech" ] || { echo "needs $home/models/ta-speech: scripts/task_arithmetic.sh train" >&2; exit 1; }
  [ -d "$model" ] && return 0
  # A run killed before its first checkpoint has nothing finished: start it again.
  [ -d "$run" ] && [ ! -e "$run/latest" ] && rm -rf "$run"
  if [ -e "$run/latest" ]; then
    "$tutti" --threads "$threads" align -o "$run" --resume
  else
    "$tutti" --threads "$threads" align --config recipes/uniwhisper/speech-student.toml -o "$run"
  fi
  "$tutti" export "$run" -o "$model"
}

eval_() {
  "$tutti" --threads "$threads" instruct eval --model "$model" --data "$home/instruct" --per-task 40 \
    -o "$home/results/uniwhisper_instruct.json"
}

bench() {
  "$tutti" --threads "$threads" bench --suite "$home/suite" --layers last \
    --model "$home/models/ta-speech" --model "$model/encoder" -o "$home/results/uniwhisper.json"
}

case "$stage" in
  data) data ;;
  train) train ;;
  eval) eval_ ;;
  bench) bench ;;
  all) data; train; eval_; bench ;;
  *) echo "unknown stage $stage (data | train | eval | bench | all)" >&2; exit 2 ;;
esac
