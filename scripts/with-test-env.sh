#!/usr/bin/env bash
# Run a command inside the private test environment, then stop what was started (by PID), also when
# the command fails or is interrupted:
#   * XDG_RUNTIME_DIR: a fresh private directory (mode 700) under .run/
#   * PulseAudio with two 48 kHz mono null sinks (vsink, vsink2): real PortAudio devices, one per
#     simulated machine; vsink is the default sink and vsink.monitor the default source; and a
#     stereo one (vstereo, "Stereo-Headphones-Test") where channel placement is measured
#   * Xvfb (-noreset so xmodmap mappings survive) on a free display, F13..F24 mapped
#   * a D-Bus session bus with gnome-keyring's Secret Service, unlocked with an empty test password
# Exports VOIPCLIENT_TEST_ENV=1 so tests know the real parts are there and fail (not skip) without them.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$root/.run"
rt=$(mktemp -d "$root/.run/rt.XXXXXX")
chmod 700 "$rt"
export XDG_RUNTIME_DIR=$rt
# Keyrings, Qt settings and app data of the tests stay in the private directory too.
export XDG_DATA_HOME=$rt/data XDG_CONFIG_HOME=$rt/config XDG_CACHE_HOME=$rt/cache
mkdir -p "$XDG_DATA_HOME" "$XDG_CONFIG_HOME" "$XDG_CACHE_HOME"
pids=()

cleanup() {
  local rc=$?
  # The keyring's restart loop first (it would start the daemon again), then the daemon.
  if [ -n "${gk_loop:-}" ]; then
    touch "$rt/keyring.stop"
    kill "$gk_loop" 2>/dev/null
    [ -s "$rt/gnome-keyring.pid" ] && pids+=("$(cat "$rt/gnome-keyring.pid")")
  fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  done
  rm -rf "$rt"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "test-env: $*" >&2; }

# --- PulseAudio null sinks -------------------------------------------------------------------
export PULSE_RUNTIME_PATH=$rt/pulse
pulseaudio -D --exit-idle-time=-1 --system=false --disallow-exit --disable-shm=true \
  -n --load="module-native-protocol-unix" --load="module-always-sink" \
  --log-target="file:$rt/pulseaudio.log" 2>>"$rt/pulseaudio.log"
for _ in $(seq 50); do pactl info >/dev/null 2>&1 && break; sleep 0.1; done
if ! pactl info >/dev/null 2>&1; then
  log "PulseAudio did not start; its log:"; cat "$rt/pulseaudio.log" >&2; exit 1
fi
[ -f "$rt/pulse/pid" ] && pids+=("$(cat "$rt/pulse/pid")")
pactl load-module module-null-sink sink_name=vsink rate=48000 channels=1 >/dev/null
pactl load-module module-null-sink sink_name=vsink2 rate=48000 channels=1 >/dev/null
# A stereo sink, as headphones are: channel placement is measured at its left and right.
pactl load-module module-null-sink sink_name=vstereo rate=48000 channels=2 channel_map=front-left,front-right \
  sink_properties=device.description=Stereo-Headphones-Test >/dev/null
pactl set-default-sink vsink
pactl set-default-source vsink.monitor
# Keep both sinks running with a quiet 20 ms stream each, as a sound card that is playing is. An
# idle null sink sleeps for its 2 s maximum latency and only notices a new stream when it wakes,
# so a stream opened then gets its first callback up to 2 s late: no hardware sink does that, and
# it would hide how fast audio resumes after the audio host restarts. Silence mixed in changes no
# sample.
for sink in vsink vsink2 vstereo; do
  pacat --playback --device="$sink" --format=s16le --rate=48000 --channels=1 \
    --latency-msec=100 --raw /dev/zero --client-name="test-env keep-alive" 2>>"$rt/pulseaudio.log" &
  pids+=($!)
done
log "PulseAudio up (sinks: vsink, vsink2, vstereo, kept running)"

# --- Xvfb --------------------------------------------------------------------------------------
exec 9<> "$rt/displayfd"
Xvfb -displayfd 9 -screen 0 1280x800x24 -nolisten tcp -noreset >"$rt/xvfb.log" 2>&1 &
pids+=($!)
display=""
for _ in $(seq 100); do
  display=$(head -n 1 "$rt/displayfd" 2>/dev/null | tr -d '[:space:]')
  [ -n "$display" ] && break
  sleep 0.05
done
exec 9>&-
if [ -z "$display" ]; then log "Xvfb did not start:"; cat "$rt/xvfb.log" >&2; exit 1; fi
export DISPLAY=":$display"
# Most X11 keymaps leave F13..F24 unmapped; map them so they can be bound as PTT keys.
for i in $(seq 13 24); do xmodmap -e "keycode $((178 + i)) = F$i" 2>/dev/null; done
log "Xvfb up on $DISPLAY"

# --- D-Bus session bus + Secret Service (gnome-keyring) ------------------------------------
if command -v dbus-daemon >/dev/null && command -v gnome-keyring-daemon >/dev/null; then
  # The session bus, with activation of the Secret Service turned off: if gnome-keyring dies,
  # the bus must not start a stock daemon in its place (locked, without the test keyring: a
  # client then waits forever on its unlock prompt). Our service files come first in the search
  # order and start nothing; the restart loop below brings ours back.
  mkdir -p "$rt/dbus-services"
  for name in org.freedesktop.secrets org.gnome.keyring org.freedesktop.impl.portal.Secret; do
    printf '[D-BUS Service]\nName=%s\nExec=/bin/false\n' "$name" >"$rt/dbus-services/$name.service"
  done
  printf '%s\n' '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"' \
    ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">' '<busconfig>' \
    "  <servicedir>$rt/dbus-services</servicedir>" \
    '  <include>/usr/share/dbus-1/session.conf</include>' '</busconfig>' >"$rt/session.conf"
  bus_info=$(dbus-daemon --config-file="$rt/session.conf" --fork --print-address=1 --print-pid=1 \
    --nopidfile)
  export DBUS_SESSION_BUS_ADDRESS=$(echo "$bus_info" | sed -n 1p)
  pids+=("$(echo "$bus_info" | sed -n 2p)")
  # gnome-keyring-daemon, kept running: it has a crash of its own (a GDBus assertion when a
  # client is gone before its property read is answered: "invoke_get_property_in_idle_cb:
  # assertion failed", seen in fresh-clone runs), and with it gone every keyring test after it
  # failed. So it is restarted at once on the same keyring (unlocked with the same password:
  # the keys stored so far stay), and the run says so. (The bus above starts no other one.)
  # --foreground + $!: the PID is ours for sure (no lookup by name that could match another run).
  keyring_loop() {
    local n=0
    while [ ! -e "$rt/keyring.stop" ]; do
      printf 'voipclient-test' | gnome-keyring-daemon --foreground --unlock \
        --components=secrets >>"$rt/gnome-keyring.log" 2>&1 &
      echo $! >"$rt/gnome-keyring.pid"
      wait $!
      [ -e "$rt/keyring.stop" ] && break
      n=$((n + 1))
      echo "test-env: gnome-keyring (pid $(cat "$rt/gnome-keyring.pid")) died; restarted it" \
        "($n so far); the end of its log:" >&2
      tail -5 "$rt/gnome-keyring.log" | sed 's/^/test-env:   /' >&2
      sleep 0.1
    done
  }
  keyring_loop &
  gk_loop=$!
  for _ in $(seq 50); do [ -s "$rt/gnome-keyring.pid" ] && break; sleep 0.02; done
  gk_pid=$(cat "$rt/gnome-keyring.pid")
  export VOIPCLIENT_TEST_KEYRING_PIDFILE="$rt/gnome-keyring.pid"
  for _ in $(seq 50); do
    dbus-send --session --print-reply --dest=org.freedesktop.DBus / \
      org.freedesktop.DBus.NameHasOwner string:org.freedesktop.secrets 2>/dev/null \
      | grep -q "boolean true" && break
    sleep 0.1
  done
  export VOIPCLIENT_TEST_SECRET_SERVICE=1
  log "Secret Service up (gnome-keyring pid ${gk_pid:-?})"
fi

export VOIPCLIENT_TEST_ENV=1
log "started pids: ${pids[*]}"
"$@"
