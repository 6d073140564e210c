#!/usr/bin/env bash
# Make sure the Debian/Ubuntu packages a target needs are installed.
#   scripts/sysdeps.sh run|test|bundle
# As root, missing packages are installed with apt-get; otherwise the exact list is printed and the
# script fails, so `make` stops before doing anything that would fail later for an obscure reason.
set -euo pipefail

profile=${1:-run}

# Audio (PortAudio, Opus) and Qt on X11/offscreen with a font to draw with (DejaVu: sans and the
# fixed-pitch one pins and safety numbers use); gcc/libc6-dev because pynput's dependency evdev
# ships no wheel; xdg-utils (xdg-mime) so voipclient:// invite links open the app.
run_pkgs=(
  libportaudio2 libopus0
  libglib2.0-0 libegl1 libgl1 libfontconfig1 fonts-dejavu-core libxkbcommon0 libdbus-1-3
  libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-render-util0 libxcb-shape0
  libxcb-xkb1 libxkbcommon-x11-0
  gcc libc6-dev
  xdg-utils
)
# What the test harness starts: a PulseAudio null sink (real PortAudio device), Xvfb + xdotool +
# xmodmap (real X key events for pynput), and a real Secret Service for keyring tests.
test_pkgs=(pulseaudio xvfb xauth xdotool x11-xserver-utils dbus dbus-daemon gnome-keyring)

# `make bundle`: binutils (strip, readelf, nm, as, ld: stripping, pruning, the trimmed ICU data)
# and util-linux's unshare for the smoke test that hides the system's audio libraries.
bundle_pkgs=(binutils util-linux)

pkgs=("${run_pkgs[@]}")
if [ "$profile" = test ]; then
  pkgs+=("${test_pkgs[@]}")
fi
if [ "$profile" = bundle ]; then
  pkgs+=("${bundle_pkgs[@]}")
fi
# `make run` uses Xvfb when there is no display, so it needs it too.
if [ "$profile" = run ] && [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
  pkgs+=(xvfb xauth)
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "sysdeps: not a Debian/Ubuntu system; install the equivalents of: ${pkgs[*]}" >&2
  exit 0
fi

# python3 must be able to make a virtual environment (Debian splits venv/ensurepip out).
py=${PYTHON:-python3}
if ! "$py" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    pkgs+=(python3-venv)
  else
    echo "sysdeps: $py is older than Python 3.11 (or missing); install python3.11 or newer" >&2
    exit 1
  fi
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  echo "sysdeps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # A fresh machine has empty package lists; update once when any list is missing or a day old.
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -n 1)" ]; then
    apt-get update -qq
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "sysdeps: done"
else
  echo "sysdeps: missing system packages. Install them with:" >&2
  echo "  sudo apt-get install --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
