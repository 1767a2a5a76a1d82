import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from unet.cli import main as cli
from unet.data import load_dataset
from unet.study import run_demo, summary_table
from unet.synthetic import write_sample

NOTEBOOK = Path(__file__).resolve().parents[1] / "Unet.ipynb"


def test_committed_notebook_has_no_outputs_and_a_parameters_cell():
    notebook = json.loads(NOTEBOOK.read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code and all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code)
    tagged = [cell for cell in code if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and "TASK" in "".join(tagged[0]["source"])


@pytest.fixture(scope="module")
def small_sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb_sample")
    write_sample(root, seed=2, n_train=6, n_test=2, n_tissue=3)
    return root


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def path_without_venv(monkeypatch):
    """PATH as JupyterLab has it when started by ``make lab``: the venv's bin/ not on it."""
    venv_bin = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin))
    monkeypatch.delenv("TENSORBOARD_BINARY", raising=False)


@pytest.mark.parametrize("task", ["nuclei", "tissue"])
def test_notebook_runs_headless_with_tiny_parameters(task, small_sample, tmp_path, capsys, monkeypatch,
                                                     path_without_venv):
    port = _free_port()
    parameters = {"DATASET": "synthetic", "SAMPLE_DIR": str(small_sample), "IMAGE_SIZE": 64, "EPOCHS": 1,
                  "STEPS_PER_EPOCH": 2, "BATCH_SIZE": 2, "BASE_FILTERS": 4, "DEPTH": 2, "RUN_NAME": "nb",
                  "LOGS_DIR": str(tmp_path / "logs"), "NPY_DIR": str(tmp_path / "npy"),
                  "OUTPUT_DIR": str(tmp_path / "output"), "LAUNCH_TENSORBOARD": task == "tissue",
                  "TENSORBOARD_PORT": port}
    if task == "tissue":
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(NOTEBOOK.parent), os.environ.get("PYTHONPATH", "")]))
    notebook = _with_tensorboard_probe(tmp_path) if task == "tissue" else NOTEBOOK
    try:
        [executed] = run_demo(notebook, tmp_path / "output", tasks=[task], parameters=parameters)
    finally:
        _stop_tensorboard(port)
    if task == "tissue":  # the notebook's TensorBoard answered, although the venv is not on PATH
        assert "TENSORBOARD ANSWERS 200" in executed.read_text()
    printed = capsys.readouterr().out  # the demo talks: sections, one line per epoch, prediction progress
    assert f"[{task}] 5. Training" in printed and "epoch 1/1  loss" in printed and "predicting: " in printed
    notebook = json.loads(executed.read_text())
    outputs = [o for cell in notebook["cells"] if cell["cell_type"] == "code" for o in cell["outputs"]]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert "SYNTHETIC" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # sample grid, curves, overlays
    assert sum("image/gif" in o.get("data", {}) for o in outputs) == 3  # input, output, training
    run = tmp_path / "logs" / "nb"
    for name in ("best.keras", "last.keras", "config.json", "history.csv", "curves.png", "training.gif"):
        assert (run / name).is_file(), name
    predictions = tmp_path / "output" / "nb" / "test"
    n_test = 2 if task == "nuclei" else 1  # tissue: the validation split of 3 images
    assert len(list((predictions / "overlays").glob("*.png"))) == n_test
    assert (predictions / "input.gif").is_file() and (predictions / "output.gif").is_file()
    metrics = json.loads((tmp_path / "output" / "nb" / "metrics.json").read_text())
    assert metrics["synthetic_data"] is True
    assert ("map" in metrics) if task == "nuclei" else ("mean_iou" in metrics)
    summary = json.loads((tmp_path / "output" / f"{task}-summary.json").read_text())
    assert summary["data"].startswith("SYNTHETIC") and summary["images"][0] >= 1 and summary["epochs"] == 1
    assert task in summary_table([summary]).splitlines()[1]


def _with_tensorboard_probe(tmp_path) -> Path:
    """A copy of the notebook with a last cell that asks the notebook's TensorBoard for its page
    (the server lives as long as the kernel: it is stopped with the kernel's process group)."""
    notebook = json.loads(NOTEBOOK.read_text())
    probe = ("import urllib.request\n"
             "with urllib.request.urlopen(f'http://127.0.0.1:{TENSORBOARD_PORT}/', timeout=30) as page:\n"
             "    print('TENSORBOARD ANSWERS', page.status, 'TensorBoard' in page.read().decode())")
    notebook["cells"].append({"cell_type": "code", "id": "tensorboard-probe", "execution_count": None,
                              "metadata": {}, "outputs": [], "source": probe})
    copy = tmp_path / "Unet-probe.ipynb"
    copy.write_text(json.dumps(notebook))
    return copy


def _stop_tensorboard(port: int) -> None:
    """End the TensorBoard server the notebook started on ``port`` (no server outlives the test)."""
    from tensorboard import manager

    for info in manager.get_all():
        if info.port == port:
            os.kill(info.pid, signal.SIGTERM)
            for _ in range(50):
                try:
                    os.kill(info.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)


def test_the_shipped_real_sample_loads_and_passes_check(tmp_path, capsys):
    sample = Path(__file__).resolve().parents[1] / "sample" / "dsb2018"
    before = {p: p.stat().st_mtime_ns for p in sample.rglob("*")}
    assert cli(["check", str(sample), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "dsb2018 dataset: 48 images" in out and "nuclei: 2155 in all" in out
    assert "dsb2018 dataset: 12 images" in out and "nuclei: 1017 in all" in out  # every test image has solution rows
    train = load_dataset(sample, npy_dir=tmp_path / "npy", progress=False, verbose=False)
    assert len(train) == 48 and {im.shape[:2] for im in train.images} >= {(256, 256), (1024, 1024), (1040, 1388)}
    assert {p: p.stat().st_mtime_ns for p in sample.rglob("*")} == before  # nothing written into the sample
    assert (sample.parent / "PROVENANCE.md").is_file()
