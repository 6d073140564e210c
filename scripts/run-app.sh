#!/usr/bin/env bash
# `make run`: start the desktop app on its embedded local server. With no display (a server or
# CI box), run it under a virtual X server so it still starts; say so.
#   scripts/run-app.sh PYTHON [extra voipclient arguments]
set -euo pipefail
py=${1:?usage: run-app.sh PYTHON [args]}
shift
args=(--local-server "$@")
if [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ]; then
  exec "$py" -m voipclient "${args[@]}"
fi
if ! command -v xvfb-run >/dev/null 2>&1; then
  echo "run-app: no display and no xvfb-run: start it in a desktop session, or install xvfb" >&2
  exit 1
fi
echo "run-app: no display here, so the window opens on a virtual X server (Xvfb)." >&2
echo "run-app: see it with a VNC server on that display, or run 'make run' in a desktop session." >&2
exec xvfb-run -a -s "-screen 0 1280x800x24 -nolisten tcp" "$py" -m voipclient "${args[@]}"
