# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean check-no-ray bench synth

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[cluster,dev,cdk]"
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

# The CloudFormation template, offline (no AWS credentials, no Docker): cdk.out/RayLauncher.template.json.
# cdk-nag (AwsSolutions) runs as part of synth; cfn-lint then lints the template.
synth: $(STAMP)
	CDK_OUTDIR=cdk.out $(BIN)/python app.py
	@rc=0; $(BIN)/cfn-lint cdk.out/RayLauncher.template.json || rc=$$?; \
	  if [ $$(( rc & 2 )) -ne 0 ]; then echo "cfn-lint: errors"; exit 1; else echo "cfn-lint: no errors (exit $$rc: warnings are bit 4)"; fi

bench: $(STAMP)
	$(BIN)/python bench/sales_job.py
	$(BIN)/python bench/intake.py

clean:
	rm -rf $(VENV) .local .pytest_cache cdk.out
