# The two commands: `make run` and `make test` (see README). Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUNDLE_STAMP := $(VENV)/.bundle-installed
# The relay's native fan-out, loaded with ctypes (voipclient/server/mmsg.py; docs/server.md).
NATIVE := voipclient/server/_fanout.so

.PHONY: run test lint typecheck pytest bench screenshots bundle bundle-smoke sysdeps-run sysdeps-test sysdeps-bundle clean

## make run: install what is missing, then start the app (on an embedded local server).
run: sysdeps-run $(STAMP) $(NATIVE)
	scripts/run-app.sh $(PY) $(RUN_ARGS)

## make test: install what is missing, start PulseAudio null sinks + Xvfb + Secret Service in a
## private runtime dir, run lint, type checks and the whole pytest suite, stop what was started.
test: sysdeps-test $(STAMP) $(NATIVE) lint typecheck
	scripts/with-test-env.sh $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy voipclient

bench: sysdeps-test $(STAMP) $(NATIVE) bundle
	scripts/with-test-env.sh $(PY) benchmarks/run_all.py

## make bundle: the one-folder PyInstaller bundle in dist/voipclient (docs/install.md)
bundle: sysdeps-bundle $(STAMP) $(BUNDLE_STAMP) $(NATIVE)
	$(PY) packaging/make_icons.py
	$(VENV)/bin/pyinstaller voipclient.spec --noconfirm --distpath dist --workpath build/pyinstaller
	@du -s --apparent-size --block-size=1M dist/voipclient | awk '{print "bundle: dist/voipclient, " $$1 " MiB unpacked"}'

## make bundle-smoke: the bundle's --version and --self-test with the system's libopus and
## libportaudio hidden (what CI runs after make test)
bundle-smoke: bundle
	scripts/bundle-smoke.sh dist/voipclient

$(BUNDLE_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bundle]'
	@touch $(BUNDLE_STAMP)

## make screenshots: regenerate docs/screenshots/*.png from the real app (README, docs/ui.md)
screenshots: sysdeps-test $(STAMP)
	scripts/with-test-env.sh $(PY) scripts/screenshots.py

sysdeps-run:
	@PYTHON=$(PYTHON) scripts/sysdeps.sh run

sysdeps-test:
	@PYTHON=$(PYTHON) scripts/sysdeps.sh test

sysdeps-bundle:
	@PYTHON=$(PYTHON) scripts/sysdeps.sh bundle

# The venv is created once and reinstalled only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# Built with the C compiler the install already needs (pynput's evdev has no wheel): one C file
# that needs libc's headers only. Without it the relay fills its batches in Python.
$(NATIVE): voipclient/server/_fanout.c
	$(CC) -O2 -fPIC -shared -Wall -Wextra -Werror -o $@ $<

clean:
	rm -f $(NATIVE)
	rm -rf $(VENV) .run build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
