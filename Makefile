# Set-up and the two jobs of README.md. Torch is installed first, pinned to the CPU build on this
# class of machine, so that resolving the package's "torch>=2.2" never pulls a CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

SYSTEM_TOOLS := opusenc:opus-tools c2enc:codec2 chromium:chromium
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: install system-deps demo test lint benchmark clean

$(BIN)/ndvq: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[train,eval,dev]'
	touch $@

# Classical codecs for the evaluation baselines and a browser for the report test (Debian/Ubuntu).
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; fi

install: $(BIN)/ndvq

demo: install
	$(BIN)/python examples/demo.py

test: install system-deps
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/pytest

benchmark: install
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
