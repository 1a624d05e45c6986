# Each target creates .venv if missing. torch/torchvision are pinned to the releases this
# project is developed on (a CUDA build that also runs on the CPU).
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	.venv/bin/ptq4vm sweep --json sweep.json

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pytest benchmarks -q

lint: $(STAMP)
	.venv/bin/ruff check ptq4vm_fx tests benchmarks

clean:
	rm -rf .venv build *.egg-info
