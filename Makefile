# Two entry points (README): `make app` and `make test`. Both create .venv and install the pinned set first.
PY := .venv/bin/python

.venv/.installed: requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt -e .
	touch $@

app: .venv/.installed
	$(PY) app.py

# JupyterLab on the notebooks. Jupyter refuses to start as root (containers, CI, a cloud VM's default user) unless
# told --allow-root, so it is added for root only. NOTEBOOK_ARGS passes more options (--no-browser --port=8890).
notebooks: .venv/.installed
	$(PY) -m jupyterlab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(NOTEBOOK_ARGS)

# Debian's chromium drives the browser tests; never a downloaded browser.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)

# The second emoji style of emoji-64 (scripts/train_emoji64.py): Debian's Noto Color Emoji font, never downloaded
# at app start. Tests that need it skip without it.
emoji-font:
	@test -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf || \
	  (apt-get update -qq && apt-get install -y -qq fonts-noto-color-emoji >/dev/null)

test: .venv/.installed browser
	$(PY) -m pytest -q -p no:cacheprovider --durations=25; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken" >&2; fi; exit $$rc

.PHONY: app notebooks test browser emoji-font
