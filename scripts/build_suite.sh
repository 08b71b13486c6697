#!/usr/bin/env bash
# Build the full tutti benchmark suite from package-registry data, offline after the downloads.
#
#   scripts/build_suite.sh [OUT]        (default OUT: $TUTTI_HOME/suite, TUTTI_HOME ~/.cache/tutti)
#
# 1. `apt-get download` + `dpkg-deb -x` (no install, no root needed beyond apt's cache) of the
#    Debian bookworm packages listed below into $TUTTI_HOME/suite-src/root/<package>; 0ad's audio
#    is taken out of its public.zip with unzip.
# 2. Synthetic speech with the packages' own espeak-ng and flite binaries (run from the unpacked
#    folders with LD_LIBRARY_PATH): English digit and letter names for the keyword task, short
#    sentences for the gender task, each voice its own source. Listed in synth/index.tsv.
# 3. `tutti suite build --data $TUTTI_HOME/suite-src -o OUT`: decodes, crops, mixes and renders
#    (music from the General MIDI soundfonts with tutti's own SoundFont path) into 16 kHz WAV,
#    manifests and task.toml files, split by source, seeded.
#
# Downloads ~2.2 GB (0ad-data alone is 1.4 GB; only its 275 MB of audio is kept unpacked), needs
# ~1.5 GB of disk for the unpacked sources and ~0.4 GB for the suite. Every step is skipped when
# its output is already there, so an interrupted run can simply be started again.
set -euo pipefail
cd "$(dirname "$0")/.."
home="${TUTTI_HOME:-$HOME/.cache/tutti}"
out="${1:-$home/suite}"
src="$home/suite-src"
mkdir -p "$src/debs" "$src/root" "$src/synth"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tutti/target}"
start=$(date +%s)

packages=(
  asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav asterisk-core-sounds-fr-wav
  asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav
  tuxpaint-stamps-default klettres-data hedgewars-data wesnoth-1.16-data frozen-bubble-data
  fluid-soundfont-gm timgm6mb-soundfont 0ad-data
  espeak-ng libespeak-ng1 espeak-ng-data libpcaudio0 libsonic0 flite libflite1
)
for p in "${packages[@]}"; do
  if [ -e "$src/root/$p/.done" ]; then continue; fi
  if ! ls "$src/debs/${p}_"*.deb >/dev/null 2>&1; then
    (cd "$src/debs" && apt-get download "$p" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  fi
  deb=$(ls "$src/debs/${p}_"*.deb | head -1)
  rm -rf "$src/root/$p" && mkdir -p "$src/root/$p"
  if [ "$p" = 0ad-data ]; then
    # 3.2 GB unpacked; only the audio inside public.zip is needed.
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$src/root/$p" ./usr/share/games/0ad/mods/public/public.zip
    unzip -q -o "$src/root/$p/usr/share/games/0ad/mods/public/public.zip" 'audio/*' -d "$src/root/$p/audio-x"
    rm -f "$src/root/$p/usr/share/games/0ad/mods/public/public.zip"
  else
    dpkg-deb -x "$deb" "$src/root/$p"
  fi
  touch "$src/root/$p/.done"
done
echo "packages unpacked: $(du -sh "$src/root" | cut -f1)"

# Synthetic speech (espeak-ng needs PulseAudio's client library: scripts/lib/need_libpulse.sh).
. scripts/lib/need_libpulse.sh
need_libpulse
r="$src/root"
export LD_LIBRARY_PATH="$r/libespeak-ng1/usr/lib/x86_64-linux-gnu:$r/libpcaudio0/usr/lib/x86_64-linux-gnu:$r/libsonic0/usr/lib/x86_64-linux-gnu:$r/libflite1/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
espeak="$r/espeak-ng/usr/bin/espeak-ng --path=$r/espeak-ng-data/usr/lib/x86_64-linux-gnu"
flite="$r/flite/usr/bin/flite"
if [ ! -e "$src/synth/.done" ]; then
  rm -rf "$src/synth" && mkdir -p "$src/synth"
  index="$src/synth/index.tsv"
  printf 'path\tengine\tvoice\tgender\tkind\ttext\n' > "$index"
  words=(zero one two three four five six seven eight nine)
  letters=(A B C D E F G H I J K L M N O P Q R S T U V W X Y Z)
  sentences=(
    "Please leave a message after the tone."
    "The meeting has been moved to Thursday afternoon."
    "Your call is important to us."
    "Turn left at the next intersection."
    "The weather will be sunny with light winds."
    "I would like a cup of tea, please."
    "The train to the city leaves at half past nine."
    "Thank you for waiting, an agent will be with you shortly."
  )
  synth() { # engine voice gender kind label text
    local dir="$src/synth/$1-$2"; mkdir -p "$dir"
    local f="$dir/$4-$5.wav"
    if [ "$1" = espeak ]; then $espeak -v "$2" -w "$f" "$6"; else "$flite" -voice "$2" -t "$6" -o "$f"; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "${f#$src/}" "$1" "$2" "$3" "$4:$5" "$6" >> "$index"
  }
  voices=()
  for v in m1 m2 m3 m4 m5 m6 m7; do voices+=("espeak en-us+$v male" "espeak en+$v male"); done
  for v in f1 f2 f3 f4 f5; do voices+=("espeak en-us+$v female" "espeak en+$v female"); done
  voices+=("flite kal male" "flite kal16 male" "flite awb male" "flite rms male" "flite slt female")
  for entry in "${voices[@]}"; do
    read -r engine voice gender <<< "$entry"
    for i in "${!words[@]}"; do synth "$engine" "$voice" "$gender" word "$i" "${words[$i]}"; done
    for l in "${letters[@]}"; do synth "$engine" "$voice" "$gender" word "$(echo "$l" | tr A-Z a-z)" "$l"; done
    for i in "${!sentences[@]}"; do synth "$engine" "$voice" "$gender" sentence "$i" "${sentences[$i]}"; done
  done
  touch "$src/synth/.done"
fi
echo "synthetic speech: $(($(wc -l < "$src/synth/index.tsv") - 1)) clips"

cargo build --release -p tutti-cli
"$CARGO_TARGET_DIR/release/tutti" suite build --data "$src" -o "$out"
"$CARGO_TARGET_DIR/release/tutti" validate "$out"
echo "suite: $out ($(du -sh "$out" | cut -f1)), sources $(du -sh "$src" | cut -f1), $(( $(date +%s) - start )) s"
