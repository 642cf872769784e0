# Two commands for a fresh clone (needs Python 3.11 and make):
#   make up      train a first model if models/ is empty, load the features, serve on :8000
#                (DATASET=synthetic works offline; Redis: AFM_REDIS_URL, else an embedded one;
#                every other `afm-ctr up` flag is an AFM_* variable, e.g. AFM_PORT=8080 make up)
#   make test    the whole test suite, as CI runs it (.ci/run)
PYTHON ?= python3.11
DATASET ?= ml-1m
VENV := .venv

.PHONY: up test

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[dev,local]"
	touch $@

up: $(VENV)/.installed
	$(VENV)/bin/afm-ctr up --dataset $(DATASET)

test:
	bash .ci/run
