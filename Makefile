# Two commands do all set-up on a fresh machine (each creates and fills .venv when missing):
#   make demo   - the main job: a real, small distillation search on SST-2 (local assets if present)
#   make test   - the default test suite (fast; slow tests: make test-slow)
PY := .venv/bin/python

.PHONY: venv lock demo smoke test test-slow test-all clean

venv:
	@bash scripts/setup_venv.sh

# resolve pyproject.toml again into requirements.lock (commit both together)
lock: venv
	$(PY) scripts/lock.py

demo: venv
	$(PY) tune_mkd.py --preset demo

smoke: venv
	$(PY) tune_mkd.py --preset smoke

test: venv
	$(PY) scripts/lock.py --check
	.venv/bin/ruff check .
	.venv/bin/lint-imports --no-cache
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

test-slow: venv
	$(PY) -m pytest -q -m slow

test-all: venv
	$(PY) -m pytest -q -m "slow or not slow"

clean:
	rm -rf .distillray mlflow.db
