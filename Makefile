# The two commands of the README, each on the locked environment:
#   make reproduce   smoke reproduction of every notebook (offline, CPU)
#   make test        the default test tier (everything but the end-to-end tests marked slow)
# and: make test-all (every test), make ci (what CI runs: all of it in a clean room).
# Both first create or refresh .venv from requirements.lock (seconds when it is current).
# PYTHON picks the interpreter that builds .venv (3.10 or newer): make PYTHON=python3.11 test
# Extra arguments: make test PYTEST_ARGS=tests/test_data.py, make reproduce REPRODUCE_ARGS='--only 2'
PYTHON ?= python3
VENV ?= .venv
VENV_PYTHON = $(VENV)/bin/python
PYTEST_ARGS ?=
REPRODUCE_ARGS ?=
export MPLBACKEND ?= Agg

.PHONY: venv reproduce reproduce-quick reproduce-paper test test-all ci lint lock install clean-venv \
	benchmark

venv:               ## create or refresh $(VENV) from requirements.lock
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "error: '$(PYTHON)' was not found. Install Python 3.10 or newer (python.org, pyenv, or e.g. 'sudo apt install python3.11 python3.11-venv') and run: make PYTHON=/path/to/python3 $(MAKECMDGOALS)" >&2; \
	  exit 2; }
	@$(PYTHON) tools/ensure_venv.py --venv $(VENV)

reproduce: venv     ## offline smoke reproduction of every notebook (CPU, minutes)
	$(VENV_PYTHON) -m uniq reproduce --profile smoke $(REPRODUCE_ARGS)

reproduce-quick: venv   ## real CIFAR-100, shortened schedules, one GPU
	$(VENV_PYTHON) -m uniq reproduce --profile quick --keep-going $(REPRODUCE_ARGS)

reproduce-paper: venv   ## the paper's schedules
	$(VENV_PYTHON) -m uniq reproduce --profile paper --keep-going $(REPRODUCE_ARGS)

# The exit code is also left in $(VENV)/pytest-exit-code, so that .ci/run can pass pytest's own
# code on (make itself exits with 2 whenever a recipe fails).
test: venv          ## the default tier: unit, integration and a short end-to-end path
	@rm -f $(VENV)/pytest-exit-code
	$(VENV_PYTHON) -m pytest -m "not slow" $(PYTEST_ARGS); code=$$?; \
	  echo $$code > $(VENV)/pytest-exit-code; exit $$code

test-all: venv      ## every test: the end-to-end tier (marked slow) too
	@rm -f $(VENV)/pytest-exit-code
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS); code=$$?; echo $$code > $(VENV)/pytest-exit-code; \
	  exit $$code

ci:                 ## what CI runs: lint, reproduce, test, test-all in a fresh clone, env -i
	bash .ci/run

lint: venv          ## ruff, and the package's floors (import-linter, pyproject.toml)
	$(VENV_PYTHON) -m ruff check .
	$(VENV)/bin/lint-imports --no-cache

benchmark: venv
	$(VENV_PYTHON) benchmarks/train_step.py

# Regenerate the lock (and environment.yml from it) after changing pyproject.toml's dependencies.
# Needs uv (pip install uv) and the package index; versions already in requirements.lock are
# kept where they still fit (uv prefers them), --upgrade moves everything to the newest.
lock: venv
	uv pip compile pyproject.toml --all-extras --universal --python-version 3.10 \
	  -c lock-constraints.txt -o requirements.lock
	$(VENV_PYTHON) tools/write_environment_yml.py

# The manual route: the locked versions into the current Python environment (no .venv).
install:
	$(PYTHON) -m pip install -r requirements.lock
	$(PYTHON) -m pip install --no-deps -e .

clean-venv:
	rm -rf $(VENV)
