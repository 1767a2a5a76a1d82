import json
from pathlib import Path

import pytest

from unet.study import run_demo
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


@pytest.mark.parametrize("task", ["nuclei", "tissue"])
def test_notebook_runs_headless_with_tiny_parameters(task, small_sample, tmp_path):
    parameters = {"DATASET": "synthetic", "SAMPLE_DIR": str(small_sample), "IMAGE_SIZE": 64, "EPOCHS": 1,
                  "STEPS_PER_EPOCH": 2, "BATCH_SIZE": 2, "BASE_FILTERS": 4, "DEPTH": 2, "RUN_NAME": "nb",
                  "LOGS_DIR": str(tmp_path / "logs"), "NPY_DIR": str(tmp_path / "npy"),
                  "OUTPUT_DIR": str(tmp_path / "output"), "LAUNCH_TENSORBOARD": False}
    [executed] = run_demo(NOTEBOOK, tmp_path / "output", tasks=[task], parameters=parameters)
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
