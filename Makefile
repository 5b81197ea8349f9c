# Quickstart targets. Both create the virtual environment on first use (CPU torch wheel first,
# so that no multi-GB CUDA build is pulled in), then run.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: sweep test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The main job: the default sweep on embedded defaults (local Ray, synthetic ETH3D-format
# scenes, tiny pretrained base, local MLflow server on 127.0.0.1).
sweep: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) sweeps/run.py --space sweeps/strategies.yaml $(ARGS)

# The tests. pytest's exit code 5 (no tests collected) counts as a failure.
test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=300 \
	  $(PY) -m pytest -q $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected" >&2; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV)
