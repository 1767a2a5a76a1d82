"""Bad input and faults: no silent wrong answer, no lost file, one clear line for a user's mistake.

Every case writes its input in the exact on-disk format a user would have and goes through the
public entry point (mostly the command line), checking the exit code, that the message names
the file or option, and that nothing was written or lost.
"""

import csv
import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import disk, write_dsb_sample, write_tissue
from unet.cli import main as cli
from unet.config import Config, ConfigError
from unet.data import decode_dataset, load_dataset
from unet.evaluation import nuclei_scores
from unet.io import DataError
from unet.rle import rle_encode
from unet.synthetic import write_sample


def run_cli(args, capsys) -> tuple[int, str]:
    """(exit code, stderr) of the command line; argparse's exits are caught too."""
    capsys.readouterr()
    try:
        code = cli([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error" in line]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    write_sample(root, seed=2, n_train=3, n_test=2, n_tissue=3)
    return root


# ----------------------------------------------------------------------------- silent wrong answers

def _three_nuclei(shape=(40, 40)) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    labels[disk(shape, (10, 10), 5)] = 1
    labels[disk(shape, (10, 28), 6)] = 2
    labels[disk(shape, (28, 20), 7)] = 3
    return labels


@pytest.mark.parametrize("ids", [(1, 7, 13), (13, 1, 7), (40000, 2, 65535)])
def test_any_instance_ids_score_a_perfect_prediction_one(ids):
    truth = _three_nuclei()
    prediction = np.select([truth == k for k in (1, 2, 3)], ids, 0).astype(np.uint16)
    scores = nuclei_scores(truth, prediction)
    assert scores["map"] == 1.0 and scores["predicted_nuclei"] == 3 and scores["true_nuclei"] == 3
    gapped_truth = np.where(truth > 0, truth * 10, 0)  # truth with gaps as well
    assert nuclei_scores(gapped_truth, prediction)["map"] == 1.0


def _write_masks(folder: Path, masks: list[np.ndarray]):
    for k, mask in enumerate(masks):
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(folder / "masks" / f"m{k:03d}.png")


def test_empty_and_duplicate_masks_are_reported_and_never_count_as_nuclei(tmp_path, capsys):
    root = tmp_path / "stage1_train"
    shape = (40, 40)
    a, b = disk(shape, (10, 10), 5), disk(shape, (28, 25), 7)
    folder = write_dsb_sample(root, "s1", np.full((*shape, 3), 90, np.uint8), [a, b])
    _write_masks(folder, [a, np.zeros(shape, bool), a, b, a & disk(shape, (10, 10), 3)])
    dataset = decode_dataset(root, progress=False)
    labels = dataset.instances[0]
    assert labels.max() == 2 and len(np.unique(labels)) == 3  # two nuclei, numbered 1..2
    report = "\n".join(dataset.report)
    assert "m001.png: empty mask" in report and "m002.png: duplicate of" in report and "m000.png" in report
    assert "m004.png: covered entirely by" in report
    perfect = np.select([a, b], [1, 2], 0)
    assert nuclei_scores(labels, perfect)["map"] == 1.0

    code = cli(["check", str(root), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "m001.png: empty mask" in out and "duplicate of" in out


def test_rgba_masks_are_read_by_their_colour_not_their_alpha(tmp_path):
    root = tmp_path / "stage1_train"
    shape = (32, 36)
    nucleus, drawn_in_alpha = disk(shape, (12, 12), 6), disk(shape, (22, 26), 5)
    folder = write_dsb_sample(root, "s1", np.full((*shape, 3), 60, np.uint8), [])
    (folder / "masks").mkdir()
    opaque = np.zeros((*shape, 4), np.uint8)
    opaque[..., 3] = 255  # opaque black everywhere, white nucleus
    opaque[nucleus, :3] = 255
    Image.fromarray(opaque, mode="RGBA").save(folder / "masks" / "a.png")
    alpha_only = np.zeros((*shape, 4), np.uint8)
    alpha_only[drawn_in_alpha, 3] = 255  # transparent background, the nucleus drawn in alpha
    Image.fromarray(alpha_only, mode="RGBA").save(folder / "masks" / "b.png")
    labels = decode_dataset(root, progress=False).instances[0]
    assert np.array_equal(labels == 1, nucleus) and np.array_equal(labels == 2, drawn_in_alpha)


def test_a_mask_covering_the_whole_image_is_refused_by_check(tmp_path, capsys):
    root = tmp_path / "stage1_train"
    shape = (30, 30)
    folder = write_dsb_sample(root, "s1", np.full((*shape, 3), 60, np.uint8), [disk(shape, (10, 10), 4)])
    inverted = ~disk(shape, (20, 20), 4)  # white background, black nucleus
    Image.fromarray(inverted.astype(np.uint8) * 255, mode="L").save(folder / "masks" / "m001.png")
    code, err = run_cli(["check", root, "--quiet"], capsys)
    assert code == 1 and "m001.png: the mask covers 95% of its image" in err


def test_bytes_corrupted_inside_a_cached_array_are_detected(dsb_dir, tmp_path, capsys):
    npy = tmp_path / "npy"
    expected = [np.array(image) for image in load_dataset(dsb_dir, npy_dir=npy, progress=False).images]
    cache = next(p for p in npy.iterdir() if not p.name.startswith("."))
    path = cache / "images.npy"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # same size, valid header, one wrong pixel
    path.write_bytes(bytes(data))
    capsys.readouterr()
    again = load_dataset(dsb_dir, npy_dir=npy, progress=False)
    assert "building cache" in capsys.readouterr().out
    for x, y in zip(expected, again.images):
        assert np.array_equal(x, y)
    load_dataset(dsb_dir, npy_dir=npy, progress=False)
    assert "cache hit" in capsys.readouterr().out


# ----------------------------------------------------------------------------- lost data

@pytest.fixture
def tissue_run(tmp_path):
    from conftest import fake_run

    return fake_run(tmp_path, "tissue", 4, [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25]])


def _digest(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_predict_never_writes_into_its_input_or_over_ground_truth(sample, tissue_run, tmp_path, capsys):
    data = tmp_path / "t"
    write_tissue(data, "P", n=2)
    other = tmp_path / "other"
    write_tissue(other, "L", n=1)
    before, other_before = _digest(data), _digest(other)
    npy = tmp_path / "npy"
    for out in (data, data / "masks", data / "predictions", tmp_path, other):
        code, err = run_cli(["predict", "--model", tissue_run, "--images", data, "--out", out, "--npy-dir", npy,
                             "--quiet"], capsys)
        assert code == 1 and len(error_lines(err)) == 1 and str(out) in err, (out, err)
    assert _digest(data) == before and _digest(other) == other_before
    out = tmp_path / "pred"
    for _ in range(2):  # a folder predict wrote itself may be written again
        code, err = run_cli(["predict", "--model", tissue_run, "--images", data, "--out", out, "--npy-dir", npy,
                             "--quiet"], capsys)
        assert code == 0, err
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["s0.png", "s1.png"]


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    from unet import run as runs

    monkeypatch.setattr(runs.time, "strftime", lambda fmt: "20260101-120000")
    config = Config(logs_dir=str(tmp_path / "logs"))
    folders = [runs.run_folder(config) for _ in range(3)]
    assert [f.name for f in folders] == ["dsb2018-20260101-120000", "dsb2018-20260101-120000-2",
                                         "dsb2018-20260101-120000-3"]
    named = config.replace(run_name=folders[0].name)
    with runs.run_lock(folders[0]):
        with pytest.raises(DataError, match="another training process"):
            with runs.run_lock(runs.run_folder(named)):
                pass
    (folders[0] / "summary.json").write_text("{}")
    with pytest.raises(DataError, match="holds a finished run"):
        runs.run_folder(named)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import keras
    from unet import training
    from unet.callbacks import ResumeBackup
    from unet.config import Config
    from unet.data import decode_dataset

    class KillBeforeBackup(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:  # epoch 2: history and checkpoints written, its backup not yet
                os.kill(os.getpid(), signal.SIGKILL)

    make = training.make_callbacks
    def with_kill(*args, **kwargs):
        callbacks = make(*args, **kwargs)
        at = next(i for i, c in enumerate(callbacks) if isinstance(c, ResumeBackup))
        return callbacks[:at] + [KillBeforeBackup()] + callbacks[at:]
    training.make_callbacks = with_kill
    data = decode_dataset(sys.argv[1], progress=False)
    train_set, val_set = data.split(0.34, seed=0)
    config = Config(image_size=32, batch_size=2, epochs=4, steps_per_epoch=2, base_filters=2, depth=2,
                    logs_dir=sys.argv[2], run_name="killed", seed=3, precision="float32")
    training.train(config, train_set, val_set, verbose=0)
""")


def test_a_kill_between_checkpoint_and_backup_loses_nothing(sample, tmp_path):
    from unet.run import Run, read_history
    from unet.training import train

    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, str(script), str(sample / "dsb2018"), str(tmp_path / "logs")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-2000:]
    run = tmp_path / "logs" / "killed"
    assert read_history(run / "history.csv")["epoch"] == [0.0, 1.0]  # epoch 2 logged, not backed up
    assert json.loads((run / "backup" / "state.json").read_text())["epoch"] == 1
    assert not list(run.glob(".*.keras"))  # no temporary checkpoint left half-written

    data = decode_dataset(sample / "dsb2018", progress=False)
    train_set, val_set = data.split(0.34, seed=0)
    config = Config(image_size=32, batch_size=2, epochs=4, steps_per_epoch=2, base_filters=2, depth=2,
                    logs_dir=str(tmp_path / "logs"), run_name="killed", seed=3, precision="float32")
    resumed = train(config, train_set, val_set, verbose=0)
    history = read_history(run / "history.csv")
    assert history["epoch"] == [0.0, 1.0, 2.0, 3.0]  # each epoch once, the killed one redone
    best = json.loads((run / "best.json").read_text())
    assert best["value"] == pytest.approx(min(history["val_loss"]))
    assert resumed.model is not None and Run.load(run / "best.keras").model is not None
    assert not (run / "backup").exists()


# ----------------------------------------------------------------------------- one line for a user's mistake

@pytest.mark.parametrize("rows,expected", [
    ("index,name\n0,background\none,tumour\n", "classes.csv:3: index 'one' should be 1"),
    ("index,name,color\n0,background,#000000\n1,tumour,#12345\n", "classes.csv:3: color '#12345' is not"),
    ("name\nbackground\ntumour\nstroma\nnecrosis\n", "classes.csv:2: 'L' masks need a gray level"),
    ("index,name,value\n0,background,0\n1,tumour,lots\n", "classes.csv:3: value 'lots' is not"),
])
def test_a_malformed_classes_file_is_named_with_its_line(tmp_path, capsys, rows, expected):
    write_tissue(tmp_path / "t", "L", n=2)
    (tmp_path / "t" / "classes.csv").write_text(rows)
    code, err = run_cli(["check", tmp_path / "t", "--quiet"], capsys)
    assert code == 1 and expected in err


def test_predict_names_a_file_that_is_not_a_model_and_a_run_without_config(sample, tissue_run, tmp_path, capsys):
    fake = tmp_path / "fake_run"
    fake.mkdir()
    (fake / "best.keras").write_text("not a model")
    (fake / "config.json").write_text(json.dumps(Config().to_dict()))
    images = sample / "tissue"
    code, err = run_cli(["predict", "--model", fake / "best.keras", "--images", images, "--out", tmp_path / "o1"],
                        capsys)
    assert code == 1 and "best.keras: not a Keras model" in err and len(error_lines(err)) == 1
    (tissue_run.parent / "config.json").unlink()
    code, err = run_cli(["predict", "--model", tissue_run.parent, "--images", images, "--out", tmp_path / "o2"],
                        capsys)
    assert code == 1 and "config.json: missing" in err
    code, err = run_cli(["predict", "--model", tmp_path / "nowhere", "--images", images, "--out", tmp_path / "o3"],
                        capsys)
    assert code == 1 and "nowhere: no such model file" in err


def test_predict_names_images_given_as_a_file_and_an_output_that_is_a_file(sample, tissue_run, tmp_path, capsys):
    image = next((sample / "tissue" / "images").iterdir())
    code, err = run_cli(["predict", "--model", tissue_run, "--images", image, "--out", tmp_path / "o"], capsys)
    assert code == 1 and "is a file, not folder" in err
    (tmp_path / "taken").write_text("")
    code, err = run_cli(["predict", "--model", tissue_run, "--images", sample / "tissue", "--out",
                         tmp_path / "taken"], capsys)
    assert code == 1 and "taken: exists and is not a folder" in err


def test_an_unwritable_cache_folder_is_one_line(sample, tmp_path, capsys, monkeypatch):
    (tmp_path / "npy").write_text("a file where the cache folder should be")
    code, err = run_cli(["train", "--data", sample / "dsb2018", "--npy-dir", tmp_path / "npy" / "cache",
                         "--logs-dir", tmp_path / "logs"], capsys)
    assert code == 1 and "cannot write the NPY cache" in err and len(error_lines(err)) == 1
    from unet import data

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "npy2"))

    monkeypatch.setattr(data.cache, "write_cache", read_only)
    code, err = run_cli(["train", "--data", sample / "dsb2018", "--npy-dir", tmp_path / "npy2",
                         "--logs-dir", tmp_path / "logs"], capsys)
    assert code == 1 and "Permission denied" in err
    assert not (tmp_path / "logs").exists()


def test_an_unwritable_output_folder_is_one_line(sample, tissue_run, tmp_path, capsys, monkeypatch):
    from unet import io

    def read_only(path, text):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(io, "write_text_atomic", read_only)
    code, err = run_cli(["predict", "--model", tissue_run, "--images", sample / "tissue", "--out", tmp_path / "ro"],
                        capsys)
    assert code == 1 and "ro/prediction.json: Permission denied" in err


def test_a_training_set_of_one_image_is_refused_before_a_run_folder(tmp_path, capsys):
    root = tmp_path / "one" / "stage1_train"
    write_dsb_sample(root, "only", np.full((32, 32, 3), 50, np.uint8), [disk((32, 32), (16, 16), 5)])
    code, err = run_cli(["train", "--data", root, "--npy-dir", tmp_path / "npy", "--logs-dir", tmp_path / "logs"],
                        capsys)
    assert code == 1 and "1 training and 0 validation images" in err
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("options,expected,code", [
    (["--image-size", "100"], "--image-size: 100 is not a multiple of 2**depth = 16", 1),
    (["--tile-size", "196", "--depth", "3"], "--tile-size: 196 is not a multiple of 2**depth = 8", 1),
    (["--class-weights", "1,2"], "--class-weights: 2 weight(s) given; the model's classes are background", 1),
    (["--xla", "maybe"], "argument --xla: invalid choice: 'maybe' (choose from 'auto', 'on', 'off')", 2),
    (["--tta", "maybe"], "argument --tta: 'maybe' is not a boolean", 2),
    (["--dropout", "1.5"], "--dropout: 1.5 must be a number in [0, 1)", 1),
    (["--class-weights", "1,x"], "argument --class-weights: '1,x' is not a comma-separated list", 2),
    (["--steps-per-epoch", "-1"], "--steps-per-epoch: -1 must be a non-negative integer", 1),
    (["--learning-rate", "0"], "--learning-rate: 0.0 must be a number in [1e-12, 10]", 1),
])
def test_invalid_training_options_stop_before_a_run_folder(sample, tmp_path, capsys, options, expected, code):
    got, err = run_cli(["train", "--data", sample / "tissue", "--npy-dir", tmp_path / "npy",
                        "--logs-dir", tmp_path / "logs", *options], capsys)
    assert got == code and expected in err and len(error_lines(err)) == 1, err
    assert not (tmp_path / "logs").exists()


def test_a_config_file_that_is_not_json_or_holds_a_bad_value_is_one_line(sample, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{'epochs': 3,}")
    code, err = run_cli(["train", "--data", sample / "dsb2018", "--config", bad, "--logs-dir", tmp_path / "l"], capsys)
    assert code == 1 and "bad.json: not valid JSON" in err
    bad.write_text(json.dumps({**Config().to_dict(), "strategy": "everywhere"}))
    code, err = run_cli(["train", "--data", sample / "dsb2018", "--config", bad, "--logs-dir", tmp_path / "l"], capsys)
    assert code == 1 and "bad.json: key 'strategy': 'everywhere' is not one of auto, mirrored, default" in err
    with pytest.raises(ConfigError, match="key 'strategy'"):
        Config.load(bad)  # an old run folder's config with a value that is no longer allowed


def test_check_with_the_wrong_kind_names_the_layout(sample, capsys):
    code, err = run_cli(["check", sample / "dsb2018", "--kind", "tissue", "--quiet"], capsys)
    assert code == 1 and "this is a dsb2018 folder, not tissue" in err
    code, err = run_cli(["check", sample / "tissue", "--kind", "dsb2018", "--quiet"], capsys)
    assert code == 1 and "this is a tissue folder, not dsb2018" in err


@pytest.mark.parametrize("encoded,expected", [
    ("1 5 x 3", "stage1_solution.csv:3: EncodedPixels must be positive integers"),
    ("1 5 20", "stage1_solution.csv:3: EncodedPixels holds an odd number"),
    ("1 5 2000 10", "stage1_solution.csv:3: bad run-length labels for ttt (run outside an image of 30x36"),
])
def test_run_length_errors_name_the_file_and_line(tmp_path, capsys, encoded, expected):
    root = tmp_path / "dsb"
    write_dsb_sample(root / "stage1_test", "ttt", np.full((30, 36, 3), 100, np.uint8), [])
    with open(root / "stage1_solution.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageId", "EncodedPixels", "Height", "Width", "Usage"])
        writer.writerow(["ttt", rle_encode(disk((30, 36), (8, 8), 5)), 30, 36, "Public"])
        writer.writerow(["ttt", encoded, 30, 36, "Public"])
    code, err = run_cli(["evaluate", "--pred", tmp_path / "p", "--truth", root, "--npy-dir", tmp_path / "npy"],
                        capsys)
    assert code == 1 and expected in err, err


def test_config_rejects_unknown_values_at_construction():
    with pytest.raises(ConfigError, match="xla: 'maybe' is not one of auto, on, off"):
        Config(xla="maybe")
    with pytest.raises(ConfigError, match="precision"):
        Config(precision="bf16")
    with pytest.raises(ConfigError, match="depth"):
        Config(depth=0)
    with pytest.raises(ConfigError, match="sqrt_channels: 'false' must be true or false"):
        Config(sqrt_channels="false")  # a quoted JSON value would otherwise count as true


def test_a_demo_notebook_that_fails_is_one_line_pointing_to_the_executed_copy(tmp_path, capsys, monkeypatch):
    import nbformat

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))

    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                 "display_name": "Python 3"}})
    parameters = nbformat.v4.new_code_cell("EPOCHS = 3")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell("from unet.config import Config\nConfig(epochs=EPOCHS)")]
    nbformat.write(notebook, tmp_path / "study.ipynb")
    code, err = run_cli(["demo", "--notebook", tmp_path / "study.ipynb", "--output", tmp_path / "out",
                         "--tasks", "nuclei", "--set", "EPOCHS=0"], capsys)
    assert code == 1 and "Unet-nuclei.ipynb: the nuclei notebook stopped in cell 3 with ConfigError: epochs: 0" in err
    assert "ConfigError" in (tmp_path / "out" / "Unet-nuclei.ipynb").read_text()  # the traceback is kept there
