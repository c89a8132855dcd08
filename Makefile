# Two commands on a fresh machine (Python >= 3.11 with venv, make):
#   make demo   install into .venv, run the gateway against the bundled Azure mock
#   make test   install into .venv, run lint, type checks and the whole test suite
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo serve test lint typecheck unit clean redis-server

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aigw demo

serve: $(STAMP)
	$(BIN)/aigw serve --conf-dir conf.d --listen 127.0.0.1:8000

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The token-quota tests run against a real redis-server (Debian package), started
# by the test fixtures on a free port; installed here when missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found: installing the Debian package (apt-get install redis-server)"; \
	  SUDO=; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null \
	    || { $$SUDO apt-get update -q >/dev/null && \
	         $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null; } \
	    || { echo "error: could not install redis-server; install it with: sudo apt-get install redis-server" >&2; exit 1; }; \
	  systemctl disable --now redis-server >/dev/null 2>&1 || true; }

test: lint typecheck redis-server
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Install as a systemd service: README, "Run it as a systemd service".
PREFIX ?= /opt/aigw
DESTDIR ?=
# A system interpreter: the service cannot read one under /home or /root (pyenv).
PYTHON ?= python3

.PHONY: install uninstall
install:
	sh systemd/install.sh --prefix "$(PREFIX)" --destdir "$(DESTDIR)" --python "$(PYTHON)"

uninstall:
	sh systemd/install.sh --uninstall --prefix "$(PREFIX)" --destdir "$(DESTDIR)"
