#!/usr/bin/env bash
# The bundle on a machine without the system's audio libraries (CI runs this after `make test`):
# in a private mount namespace, /dev/null is bind-mounted over every libopus and libportaudio the
# system has, and an empty file over the dynamic loader's cache, so nothing can find them. Then:
#   0. nothing the spec leaves out got in, and the size is within the 150 MB budget;
#   1. a control run: the venv's own `voipclient --self-test` must FAIL its opus and audio checks
#      (proves the libraries really are hidden);
#   2. the bundle's `voipclient --version` and `voipclient-server --version`;
#   3. the bundle's `voipclient --self-test`: every check ok (one line each);
#   4. the bundle's audio host lists devices (`voipclient --audio-host --list-devices`);
#   5. the bundle's window on its embedded local server, under Xvfb, connected with 5 channels,
#      with its audio host process running.
#   scripts/bundle-smoke.sh BUNDLE_DIR [VENV_PYTHON]
set -euo pipefail
bundle=$(readlink -f "${1:?usage: bundle-smoke.sh BUNDLE_DIR [VENV_PYTHON]}")
py_arg=${2:-.venv/bin/python}
py="$(cd "$(dirname "$py_arg")" && pwd)/$(basename "$py_arg")"  # not resolved: a venv's python is a symlink

if [ "${BUNDLE_SMOKE_INSIDE:-}" != 1 ]; then
  if [ "$(id -u)" = 0 ]; then ns=(unshare -m); else ns=(unshare -r -m); fi
  exec env BUNDLE_SMOKE_INSIDE=1 "${ns[@]}" bash "$0" "$bundle" "$py"
fi

# -- inside the private mount namespace --------------------------------------------------------
mount --make-rprivate / 2>/dev/null || true
hidden=()
while read -r lib; do
  for path in "$lib" "$(readlink -f "$lib")"; do
    if [ -e "$path" ] && ! printf '%s\n' "${hidden[@]:-}" | grep -qx "$path"; then
      mount --bind /dev/null "$path"
      hidden+=("$path")
    fi
  done
done < <(ldconfig -p | awk '/lib(opus|portaudio)\.so/ {print $NF}')
empty=$(mktemp)
mount --bind "$empty" /etc/ld.so.cache
echo "bundle-smoke: hidden: ${hidden[*]:-none} and /etc/ld.so.cache"

fail() { echo "bundle-smoke: FAIL: $*" >&2; exit 1; }

echo "bundle-smoke: 0. contents and size"
for banned in libasound.so libqgtk3 libgtk-3 keyrings/alt libQt6Quick libQt6Qml; do
  if find "$bundle" -path "*$banned*" | grep -q .; then fail "the bundle carries $banned"; fi
done
bytes=$(find "$bundle" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
echo "bundle-smoke: $((bytes / 1000000)) MB unpacked (budget 150 MB)"
[ "$bytes" -le 150000000 ] || fail "the bundle is over its 150 MB budget"

echo "bundle-smoke: 1. control: the venv's self-test without the system libraries"
control=$("$py" -m voipclient --self-test 2>&1 || true)
echo "$control" | grep -E '^(ok|FAIL) +(opus|audio-devices)' | cut -c1-120
echo "$control" | grep -q '^FAIL opus' || fail "the venv still found libopus: the libraries are not hidden"
echo "$control" | grep -q '^FAIL audio-devices' || fail "the venv still found PortAudio"
echo "$control" | grep -E '^FAIL +(opus|audio-devices)' | grep -qv 'ModuleNotFoundError' \
  || fail "the control run failed for another reason (is $py the project's venv?)"

echo "bundle-smoke: 2. versions"
"$bundle/voipclient" --version
"$bundle/voipclient-server" --version
# voipclient-server is a link to the client's executable (voipclient.spec): it must still be the
# server, with its TLS identity and its invite link
invite_dir=$(mktemp -d)
link=$("$bundle/voipclient-server" --invite --data-dir "$invite_dir" --public-host 203.0.113.5 2>/dev/null) \
  || fail "voipclient-server --invite failed"
rm -rf "$invite_dir"
case "$link" in
  voipclient://203.0.113.5:*pin=sha256/*) echo "bundle-smoke: invite $link" ;;
  *) fail "voipclient-server --invite printed no invite link: $link" ;;
esac

echo "bundle-smoke: 3. the bundle's self-test"
out=$("$bundle/voipclient" --self-test 2>/dev/null) || { echo "$out"; fail "self-test failed"; }
echo "$out" | cut -c1-140
[ "$(echo "$out" | grep -c '^ok ')" = 12 ] || fail "expected 12 ok lines"
echo "$out" | grep -q '^ok   relay-fanout   native' || fail "the bundle's relay has no native fan-out"

echo "bundle-smoke: 4. the audio host's device probe (the bundle's own PortAudio)"
probe=$("$bundle/voipclient" --audio-host --list-devices) || fail "the audio host's probe failed"
echo "$probe" | "$py" -c 'import json, sys; d = json.load(sys.stdin); assert isinstance(d, list); print(f"bundle-smoke: {len(d)} devices")' \
  || fail "the audio host's probe printed no device list: $probe"

echo "bundle-smoke: 5. the window on the embedded local server (Xvfb), its audio host started"
home=$(mktemp -d)
report=$(HOME=$home XDG_CONFIG_HOME=$home/config XDG_DATA_HOME=$home/data \
  timeout 60 xvfb-run -a -s "-screen 0 1280x800x24 -nolisten tcp" \
  "$bundle/voipclient" --local-server --quit-after 6 2>"$home/stderr" | tail -1) || true
echo "$report"
echo "$report" | grep -Eq '^voipclient: state=ready channels=5 joined=1 ' \
  || { tail -20 "$home/stderr"; fail "the bundled app did not connect to its local server"; }
echo "$report" | grep -Eq ' audio_host=[0-9]+$' \
  || { tail -20 "$home/stderr"; fail "the bundled app did not start its audio host"; }
rm -rf "$home" "$empty"
echo "bundle-smoke: ok"
