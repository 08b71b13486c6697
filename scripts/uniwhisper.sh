#!/usr/bin/env bash
# UniWhisper on tutti's data (issue 17; PAPERS.md section 4), end to end and resumable:
#
#   scripts/uniwhisper.sh [STAGE] [VARIANT]   STAGE: data | train | eval | bench | all (default all)
#                                             VARIANT: speech (default) | whisper | whisper-decoder
#
# VARIANT speech starts from the task arithmetic experiment's speech student
# (recipes/uniwhisper/speech-student.toml -> uw-speech); whisper from Whisper base's encoder, as
# UniWhisper does (recipes/uniwhisper/whisper-base.toml -> uw-whisper; needs
# scripts/fetch_teachers.sh); whisper-decoder is UniWhisper's ablation: the same run with Whisper
# base's own decoder as the frozen LM, no adapter (recipes/uniwhisper/whisper-decoder.toml ->
# uw-whisper-decoder).
#
# 1. data: instruction pairs from the pool (`tutti instruct build`, checked against the suite)
#    -> $T/instruct. Needs scripts/build_pool.sh and scripts/build_suite.sh.
# 2. train: `tutti align` with the variant's recipe (the LM comes from scripts/fetch_lm.sh) ->
#    $T/runs/uw-VARIANT, exported to $T/models/uw-VARIANT (audio-LM) whose encoder/ is a normal
#    model folder. A killed run resumes from its newest checkpoint.
# 3. eval: the audio-LM on the held-out instruction pairs (exact match per task, WER, the held-out
#    task zero-shot) -> $T/results/uw-VARIANT_instruct.json.
# 4. bench: the encoder before and after on the standard suite -> $T/results/uw-VARIANT.json.
set -euo pipefail
cd "$(dirname "$0")/.."
home="${TUTTI_HOME:-$HOME/.cache/tutti}"
export TUTTI_HOME="$home"
stage="${1:-all}"
variant="${2:-speech}"
case "$variant" in
  speech) recipe=recipes/uniwhisper/speech-student.toml; start="$home/models/ta-speech"
          need="scripts/task_arithmetic.sh train" ;;
  whisper) recipe=recipes/uniwhisper/whisper-base.toml; start="$home/teachers/whisper-base"
           need="scripts/fetch_teachers.sh" ;;
  whisper-decoder) recipe=recipes/uniwhisper/whisper-decoder.toml; start="$home/teachers/whisper-base"
           need="scripts/fetch_teachers.sh" ;;
  *) echo "unknown variant $variant (speech | whisper | whisper-decoder)" >&2; exit 2 ;;
esac
threads="${TUTTI_THREADS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tutti/target}"
cargo build --release -p tutti-cli
tutti="$CARGO_TARGET_DIR/release/tutti"
run="$home/runs/uw-$variant"
model="$home/models/uw-$variant"
mkdir -p "$home/runs" "$home/models" "$home/results"

data() {
  [ -f "$home/instruct/summary.json" ] || "$tutti" instruct build --pool "$home/pool" -o "$home/instruct" --suite "$home/suite"
  "$tutti" instruct check --data "$home/instruct" --suite "$home/suite"
}

train() {
  [ -d "$start" ] || { echo "needs $start: $need" >&2; exit 1; }
  [ -d "$model" ] && return 0
  # A run killed before its first checkpoint has nothing finished: start it again.
  [ -d "$run" ] && [ ! -e "$run/latest" ] && rm -rf "$run"
  if [ -e "$run/latest" ]; then
    "$tutti" --threads "$threads" align -o "$run" --resume
  else
    "$tutti" --threads "$threads" align --config "$recipe" -o "$run"
  fi
  "$tutti" export "$run" -o "$model"
}

eval_() {
  "$tutti" --threads "$threads" instruct eval --model "$model" --data "$home/instruct" --per-task 40 \
    -o "$home/results/uw-${variant}_instruct.json"
}

bench() {
  # The start as the align run saw it: Whisper on each clip's own length (as its export runs).
  local before="$start"
  if [ "$variant" != speech ]; then
    before="$home/models/whisper-base-unpadded"
    if [ ! -d "$before" ]; then
      rm -rf "$before.partial" && cp -r "$start" "$before.partial"
      sed -i '0,/{/s//{\n  "tutti_pad_to_window": false,/' "$before.partial/config.json"
      mv "$before.partial" "$before"
    fi
  fi
  "$tutti" --threads "$threads" bench --suite "$home/suite" --layers last \
    --model "$before" --model "$model/encoder" -o "$home/results/uw-$variant.json"
}

case "$stage" in
  data) data ;;
  train) train ;;
  eval) eval_ ;;
  bench) bench ;;
  all) data; train; eval_; bench ;;
  *) echo "unknown stage $stage (data | train | eval | bench | all)" >&2; exit 2 ;;
esac
