# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean check-no-ray bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[cluster,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/raylauncher demo
	@$(MAKE) --no-print-directory check-no-ray

test: $(STAMP)
	$(BIN)/python -m pytest
	@$(MAKE) --no-print-directory check-no-ray

# Fails if a Ray process of ours (temp dir /tmp/rl-*) outlived the demo or the tests.
check-no-ray: $(STAMP)
	@$(BIN)/python -m raylauncher.local.leftovers

bench: $(STAMP)
	$(BIN)/python bench/sales_job.py
	$(BIN)/python bench/intake.py

clean:
	rm -rf $(VENV) .local .pytest_cache
