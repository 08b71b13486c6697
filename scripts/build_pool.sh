#!/usr/bin/env bash
# Build the distillation training pool from package-registry data, offline after the downloads.
#
#   scripts/build_pool.sh [OUT]        (default OUT: $TUTTI_HOME/pool, TUTTI_HOME ~/.cache/tutti)
#
# 1. `tutti pool check-packages` refuses any package reserved for independent evaluation
#    (../shared/DATA.md; the list lives in tutti_data::sources), then `apt-get download` +
#    `dpkg-deb -x` (no install) of the packages below into $TUTTI_HOME/pool-src/root/<package>;
#    Warzone 2100's audio is taken out of its base.wz (a zip) with unzip.
# 2. Synthetic speech, run from the unpacked packages (LD_LIBRARY_PATH, --libdir): Festival with
#    five voices none of which is a speaker of the suite's synthetic voices (flite's kal, slt, awb
#    and rms are excluded on purpose, and with them Festival's kal and slt), and espeak-ng in four
#    non-English languages (the suite's espeak voices are all English), reading sentences from the
#    fortune packages of each language. Listed in synth/index.tsv.
# 3. `tutti pool build --data $TUTTI_HOME/pool-src -o OUT`: real speech (the Asterisk voices the
#    suite uses only for training, Warzone 2100's spoken messages), real effects and ambience
#    (SuperTuxKart, Widelands, Colobot, Pingus, Warzone 2100, SuperTux, Extreme Tux Racer, Warmux,
#    Freedroid), real game music (Wesnoth, Warzone 2100, SuperTuxKart, Widelands, Colobot, ...) and procedurally composed music rendered with two
#    General MIDI soundfonts the suite does not use (csound's and the OPL3 one): decoded,
#    resampled to 16 kHz, cut into clips of at most 10 s, stored as WAV with manifest.jsonl
#    (domain, source, package, origin file, seconds, sha256) and summary.json (hours per domain,
#    disk, build time).
#
# Downloads ~2.1 GB (widelands-data, supertuxkart-data and supertux-data are most of it), ~3.3 GB
# with the unpacked sources, and the pool takes ~1.4 GB (12.2 h; `tutti pool build` alone ~1 min). Every step is skipped when its output is already there, so an
# interrupted run can simply be started again.
set -euo pipefail
cd "$(dirname "$0")/.."
home="${TUTTI_HOME:-$HOME/.cache/tutti}"
out="${1:-$home/pool}"
src="$home/pool-src"
mkdir -p "$src/debs" "$src/root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tutti/target}"
start=$(date +%s)
cargo build --release -p tutti-cli
tutti="$CARGO_TARGET_DIR/release/tutti"

packages=(
  asterisk-core-sounds-fr-wav asterisk-core-sounds-it-wav
  festival libestools2.5 festlex-cmu festlex-poslex festlex-ifd
  festvox-kdlpc16k festvox-italp16k festvox-itapc16k festvox-ru festvox-ca-ona-hts festival-ca
  espeak-ng libespeak-ng1 espeak-ng-data libpcaudio0 libsonic0
  fortunes fortunes-min fortunes-de fortunes-es fortunes-it fortunes-ru
  supertuxkart-data widelands-data colobot-common-sounds pingus-data
  warzone2100-data warzone2100-music wesnoth-1.16-music
  supertux-data extremetuxracer-data warmux-data freedroid-data
  csound-soundfont opl3-soundfont
)
"$tutti" pool check-packages "${packages[@]}"
for p in "${packages[@]}"; do
  if [ -e "$src/root/$p/.done" ]; then continue; fi
  if ! ls "$src/debs/${p}_"*.deb >/dev/null 2>&1; then
    (cd "$src/debs" && apt-get download "$p" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  fi
  deb=$(ls "$src/debs/${p}_"*.deb | head -1)
  rm -rf "$src/root/$p" && mkdir -p "$src/root/$p"
  dpkg-deb -x "$deb" "$src/root/$p"
  if [ "$p" = warzone2100-data ]; then
    unzip -q -o "$src/root/$p/usr/share/games/warzone2100/base.wz" 'audio/*' -d "$src/root/$p/audio-x"
  fi
  touch "$src/root/$p/.done"
done
echo "packages unpacked: $(du -sh "$src/root" | cut -f1)"

r="$src/root"
# Sentences: fortune cookies of each language, one per line, 40-220 characters of plain prose,
# in a fixed pseudo-random order (the same on every machine).
texts="$src/texts"
if [ ! -e "$texts/.done" ]; then
  rm -rf "$texts" && mkdir -p "$texts"
  sentences() { # out files...
    local outf="$1"; shift
    cat "$@" | awk 'BEGIN { RS = "\n%\n" } {
        gsub(/[ \t\r\n]+/, " "); gsub(/^ | $/, "");
        if (length($0) < 40 || length($0) > 220) next;
        if ($0 ~ /[|_<>{}\[\]\\\/@#$^*=~`"]/) next;
        if ($0 ~ /[0-9]/) next;
        print }' | awk '{ printf "%08d\t%s\n", (NR * 2654435761) % 100000007, $0 }' | sort -n | cut -f2- > "$outf"
  }
  fdir() { echo "$r/$1/usr/share/games/fortunes"; }
  sentences "$texts/en.txt" $(find "$(fdir fortunes)" "$(fdir fortunes-min)" -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8')
  sentences "$texts/de.txt" $(find -L "$(fdir fortunes-de)/de" -type f ! -name '*.dat' ! -name '*.u8')
  sentences "$texts/es.txt" $(find -L "$(fdir fortunes-es)/es" -type f ! -name '*.dat' ! -name '*.u8')
  sentences "$texts/it.txt" $(find -L "$(fdir fortunes-it)/it" -type f ! -name '*.dat' ! -name '*.u8')
  sentences "$texts/ru.txt" $(find -L "$(fdir fortunes-ru)/ru" -type f ! -name '*.dat' ! -name '*.u8')
  wc -l "$texts"/*.txt
  touch "$texts/.done"
fi

synth="$src/synth"
if [ ! -e "$synth/.done" ]; then
  rm -rf "$synth" && mkdir -p "$synth"
  index="$synth/index.tsv"
  printf 'path\tengine\tvoice\tlanguage\tgender\ttext\n' > "$index"
  # Festival: one merged data folder of symbolic links, as /usr/share/festival would be.
  fest="$src/festival-share"
  rm -rf "$fest" && mkdir -p "$fest"
  for p in festival festlex-cmu festlex-poslex festlex-ifd festvox-kdlpc16k festvox-italp16k \
      festvox-itapc16k festvox-ru festvox-ca-ona-hts festival-ca; do
    cp -rsn "$r/$p/usr/share/festival/." "$fest/"
  done
  . scripts/lib/need_libpulse.sh && need_libpulse   # espeak-ng's libpcaudio0 needs it
  export LD_LIBRARY_PATH="$r/libestools2.5/usr/lib/x86_64-linux-gnu:$r/libespeak-ng1/usr/lib/x86_64-linux-gnu:$r/libpcaudio0/usr/lib/x86_64-linux-gnu:$r/libsonic0/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  festival() { # voice language gender count encoding
    local voice="$1" lang="$2" gender="$3" count="$4" enc="$5" dir="$synth/festival-$1" i=0
    mkdir -p "$dir"
    local scm="$dir/script.scm"
    echo "(voice_$voice)" > "$scm"
    while IFS= read -r line && [ $i -lt "$count" ]; do
      local f="$dir/$(printf '%04d' $i).wav"
      # One sentence the voice cannot say (a letter its rules lack) is skipped, not fatal.
      printf '(unwind-protect (utt.save.wave (utt.synth (Utterance Text "%s")) "%s" (quote riff)) nil)\n' "$line" "$f" >> "$scm"
      printf '%s\tfestival\t%s\t%s\t%s\t%s\n' "${f#$src/}" "$voice" "$lang" "$gender" "$line" >> "$index"
      i=$((i + 1))
    done < "$texts/$lang.txt"
    if [ "$enc" != utf-8 ]; then iconv -f utf-8 -t "$enc//TRANSLIT" "$scm" > "$scm.enc" && mv "$scm.enc" "$scm"; fi
    "$r/festival/usr/bin/festival" --libdir "$fest" --datadir "$fest" -b "$scm" > "$dir/log.txt" 2>&1 || true
  }
  festival ked_diphone en male 320 utf-8
  festival lp_diphone it female 240 latin1
  festival pc_diphone it male 240 latin1
  festival msu_ru_nsh_clunits ru male 240 utf-8
  festival upc_ca_ona_hts es female 240 latin1
  espeak="$r/espeak-ng/usr/bin/espeak-ng --path=$r/espeak-ng-data/usr/lib/x86_64-linux-gnu"
  for lang in de es it ru; do
    for variant in m1 m3 m5 f1 f2 f4; do
      gender=male; [ "${variant:0:1}" = f ] && gender=female
      dir="$synth/espeak-$lang+$variant"; mkdir -p "$dir"
      # Each voice reads its own slice of the sentences.
      skip=$(( 400 + $(echo m1 m3 m5 f1 f2 f4 | tr ' ' '\n' | grep -n "^$variant$" | cut -d: -f1) * 50 ))
      i=0
      sed -n "${skip},$((skip + 49))p" "$texts/$lang.txt" | while IFS= read -r line; do
        f="$dir/$(printf '%04d' $i).wav"
        $espeak -v "$lang+$variant" -w "$f" "$line"
        printf '%s\tespeak\t%s\t%s\t%s\t%s\n' "${f#$src/}" "$lang+$variant" "$lang" "$gender" "$line" >> "$index"
        i=$((i + 1))
      done
    done
  done
  touch "$synth/.done"
fi
echo "synthetic speech: $(($(wc -l < "$synth/index.tsv") - 1)) utterances listed"

"$tutti" pool build --data "$src" -o "$out"
echo "pool: $out ($(du -sh "$out" | cut -f1)), sources $(du -sh "$src" | cut -f1), $(( $(date +%s) - start )) s"
