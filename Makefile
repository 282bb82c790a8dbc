# The README's two commands: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# pip prints one warning per package for the machine's file:// mirrors that lack it; hide those.
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
QUIET  := 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true

SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: demo test install clean servers

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# torch first, pinned: the CPU wheel on disk (an unpinned torch pulls GBs of CUDA wheels)
	$(PIP) torch==2.13.0 $(QUIET)
	$(PIP) -e '.[test]' $(QUIET)
	$(PY) -c "import torch, ray, feast, kafka, pyarrow, lantern" 
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lantern demo

# What the tests use from Debian: redis-server (a real Redis) and tmux (the terminal `lantern top`
# is read back from); each installed where missing.
servers:
	@for pkg in redis-server tmux; do command -v $$pkg >/dev/null || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -q $$pkg >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q $$pkg >/dev/null; }; }; done
	@redis-server --version
	@tmux -V

test: $(STAMP) servers
	@# the layers contract (pyproject.toml): a wrong-way import fails here
	$(VENV)/bin/lint-imports --no-cache
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) data models reports .pytest_cache
