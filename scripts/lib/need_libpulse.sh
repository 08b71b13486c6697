# Sourced by build_suite.sh and build_pool.sh before they run the unpacked espeak-ng: its
# libpcaudio0 needs PulseAudio's client library (and that library's own dependencies), which a
# fresh machine may lack; installed from Debian's packages when missing.
need_libpulse() {
  if ldconfig -p | grep -q 'libpulse-simple.so.0'; then return 0; fi
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq --no-install-recommends libpulse0 >/dev/null
  else
    echo "espeak-ng needs libpulse0: run 'apt-get install libpulse0' as root, then this script again" >&2
    exit 1
  fi
}
