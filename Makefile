# Set-up and the two jobs of README.md. Torch is installed first, pinned to the CPU build on this
# class of machine, so that resolving the package's "torch>=2.2" never pulls a CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

# Optional Debian/Ubuntu packages, installed only by `make system-deps`, as command:package.
SYSTEM_TOOLS := opusenc:opus-tools c2enc:codec2 chromium:chromium
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: install system-deps check-system-deps demo test lint benchmark clean

$(BIN)/ndvq: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[train,eval,dev,onnx]'
	touch $@

# Says what each package is for, then installs the missing ones with apt-get, as root (sudo if needed).
system-deps:
	@echo "system-deps: optional Debian packages; ndvq itself needs none of them:"
	@echo "  opus-tools  opusenc, opusdec: the Opus baseline of ndvq eval"
	@echo "  codec2      c2enc, c2dec: the Codec2 baseline of ndvq eval"
	@echo "  chromium    a headless browser for the report test (about 130 packages with its dependencies)"
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
		command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -z "$$missing" ]; then echo "system-deps: all present, nothing to install"; else \
		echo "system-deps: apt-get install$$missing (apt-get may also upgrade packages they depend on)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y $$missing; fi

# Installs nothing: says which optional tools are missing, so that the tests that use them are skipped.
check-system-deps:
	@for pair in $(SYSTEM_TOOLS); do command -v $${pair%%:*} >/dev/null || \
		echo "note: $${pair%%:*} not found: the tests that use it skip it (make system-deps installs $${pair#*:})"; \
	done

install: $(BIN)/ndvq

demo: install
	$(BIN)/python examples/demo.py

test: install check-system-deps
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/ruff format --check src tests benchmarks examples scripts
	$(BIN)/pytest

benchmark: install
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
