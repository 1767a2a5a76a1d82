# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lab tensorboard clean

install: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

## the main job: the notebook, headless, for the nuclei and the tissue task
demo: $(STAMP)
	$(BIN)/python -m unet demo

## the test suite (includes a headless run of the notebook with tiny parameters)
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

## JupyterLab on the notebook
lab: $(STAMP)
	$(BIN)/jupyter lab Unet.ipynb

## TensorBoard on logs/, on this machine only
tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir logs --host 127.0.0.1 --port 6006

clean:
	rm -rf npy/*/ npy/.*-* output/* logs/*/
