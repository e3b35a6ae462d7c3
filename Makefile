# The README's two commands: `make run` and `make test`. Both set up what is
# missing on a Debian 12 machine (as root) before they do anything else.
VENV := .venv
SETUP := deploy/dev/setup-host.sh
PYTEST_ARGS ?=

.PHONY: run test setup-run setup-test venv lint typecheck demo-vm demo-vm-clean bench clean

run: setup-run venv
	$(VENV)/bin/vmbackup serve

test: setup-test venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app
	$(VENV)/bin/pytest $(PYTEST_ARGS)

setup-run:
	bash $(SETUP)

setup-test:
	bash $(SETUP) --postgres --tcp

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy app

demo-vm: setup-run
	bash deploy/dev/demo-vm.sh create

demo-vm-clean:
	bash deploy/dev/demo-vm.sh clean

bench: setup-test venv
	$(VENV)/bin/python bench/orchestration.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
