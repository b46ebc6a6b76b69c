# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Parallel test workers: most of the suite waits (Ray starting, deadlines, polls), so more
# workers than cores (2 here) pays, until the cores are the limit (4 workers used more CPU
# than 3 and took longer). Tests that share an expensive setup stay on one worker
# (`xdist_group` marks); every resource a test makes is private to its worker.
TEST_WORKERS ?= 3
# At most this many e2e units (Ray clusters, EC2 stand-ins) at once; the other workers run the
# light tests meanwhile (tests/scheduling.py).
CLUSTER_SLOTS ?= 2

.PHONY: demo demo-ec2 standin-deps test install clean check-no-ray bench synth bytecode check-bootstrap

# uv installs the same packages as pip in seconds instead of minutes (parallel downloads, no
# per-package builds); where uv cannot be had, pip does it. Bytecode is compiled at install
# (pip does it by default, uv only when asked): where PYTHONDONTWRITEBYTECODE is set (this
# machine's image sets it), nothing would ever write a .pyc, and every process (about ten per
# Ray cluster) would compile Ray from source each time it starts: a local cluster with a 3 s
# job then costs about twice the CPU (bench/python_startup.py: 47.6 vs 21.3 CPU-s).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if $(BIN)/pip install --quiet uv 2>/dev/null && $(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -e ".[cluster,dev,cdk,cli]"; then :; \
	else echo "uv unavailable: installing with pip"; $(BIN)/pip install --quiet --upgrade pip && $(BIN)/pip install --quiet -e ".[cluster,dev,cdk,cli]"; fi
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@$(MAKE) --no-print-directory bytecode
	$(BIN)/raylauncher demo
	@$(MAKE) --no-print-directory check-no-ray

# The EC2 path for real: `ray up`/`ray down` against moto's EC2, network namespaces as instances
# (Linux, root). Installs sshd/ssh/rsync with apt-get where missing, or says what to install.
demo-ec2: $(STAMP) standin-deps
	@$(MAKE) --no-print-directory bytecode
	$(BIN)/raylauncher demo --backend ec2
	@$(MAKE) --no-print-directory check-no-ray

standin-deps:
	@missing=""; for t in /usr/sbin/sshd:openssh-server ssh:openssh-client rsync:rsync ip:iproute2 unshare:util-linux; do \
	  command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing (for the EC2 stand-in)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null \
	      || { echo "apt-get install$$missing failed"; exit 1; }; \
	  else echo "the EC2 stand-in needs:$$missing (install them, as root)"; exit 1; fi; fi

# The EC2 stand-in's tests need sshd/ssh/rsync (installed here where possible); where they
# cannot run they are skipped with the reason printed.
test: $(STAMP)
	@$(MAKE) --no-print-directory standin-deps || echo "EC2 stand-in tests will be skipped (see above)"
	@$(MAKE) --no-print-directory bytecode
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --cluster-slots $(CLUSTER_SLOTS)
	@$(MAKE) --no-print-directory check-no-ray

# This checkout's own modules, compiled once (only what changed since; see the install above):
# every driver, `ray up` and test worker imports them.
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q -j 0 raylauncher jobs lambdas cdk tests bench app.py

# Fails if a Ray process of ours (temp dir /tmp/rl-*) outlived the demo or the tests.
check-no-ray: $(STAMP)
	@$(BIN)/python -m raylauncher.local.leftovers

# The CloudFormation template, offline (no AWS credentials, no Docker): cdk.out/RayLauncher.template.json.
# cdk-nag (AwsSolutions) runs as part of synth; cfn-lint then lints the template.
synth: $(STAMP)
	CDK_OUTDIR=cdk.out $(BIN)/python app.py
	@rc=0; $(BIN)/cfn-lint cdk.out/RayLauncher.template.json || rc=$$?; \
	  if [ $$(( rc & 2 )) -ne 0 ]; then echo "cfn-lint: errors"; exit 1; else echo "cfn-lint: no errors (exit $$rc: warnings are bit 4)"; fi

# Figures, not tests: each bench writes bench/results/<name>.json, then bench/README.md is
# regenerated from them. Default sizes: about 5 minutes on 2 cores (see bench/README.md).
bench: $(STAMP)
	$(BIN)/python bench/sales_job.py
	$(BIN)/python bench/intake.py
	$(BIN)/python bench/warm_clusters.py
	$(BIN)/python bench/python_startup.py
	@$(MAKE) --no-print-directory standin-deps && $(BIN)/python bench/ec2_standin.py || echo "EC2 stand-in bench skipped"
	$(BIN)/python bench/report.py
	@$(MAKE) --no-print-directory check-no-ray

# A node's bootstrap on a stock image, for real (not part of `make test`): the rendered setup
# commands run in a fresh Debian root (debootstrap; root, Linux), timed into bench/results.
check-bootstrap: $(STAMP)
	@command -v debootstrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap) >/dev/null; } \
	  || { echo "check-bootstrap needs debootstrap (apt-get install debootstrap), as root"; exit 1; }
	$(BIN)/python bench/node_bootstrap.py
	$(BIN)/python bench/report.py

clean:
	rm -rf $(VENV) .local .pytest_cache cdk.out
