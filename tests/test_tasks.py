"""The task interface: each task answers the same questions consistently, and no other module
decides by testing the kind of data itself."""

import re
from pathlib import Path

import numpy as np
import pytest

from conftest import disk
from unet.config import CHOICES, Config, ConfigError
from unet.dataset import Dataset
from unet.io import open_image
from unet.tasks import TASKS, task_for


def _labelled(kind: str) -> Dataset:
    """Two images of one task with known labels: two nuclei, or three tissue classes."""
    shape = (40, 48)
    instances = np.zeros(shape, np.uint16)
    instances[disk(shape, (12, 12), 6)] = 1
    instances[disk(shape, (26, 32), 7)] = 2
    classes = np.zeros(shape, np.uint8)
    classes[:, 16:32], classes[:, 32:] = 1, 2
    image = np.dstack([instances * 90 + 20] * 3).astype(np.uint8)
    if kind == "dsb2018":
        masks = [(instances > 0).astype(np.uint8)] * 2
        return Dataset(kind, ["a", "b"], [image, image], masks, [instances, instances])
    return Dataset(kind, ["a", "b"], [image, image], [classes, classes], None, ["bg", "x", "y"],
                   np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8))


def _one_hot(labels: np.ndarray, channels: int) -> np.ndarray:
    return np.eye(channels, dtype=np.float32)[labels]


def test_tasks_are_found_by_kind_and_by_name():
    assert task_for("dsb2018") is task_for("nuclei") and task_for("tissue").name == "tissue"
    assert {task.kind for task in TASKS} == set(CHOICES["kind"])  # every kind a config accepts has a task
    with pytest.raises(ValueError, match="unknown task"):
        task_for("cells")


@pytest.mark.parametrize("task", TASKS, ids=lambda task: task.name)
def test_a_perfect_prediction_scores_perfectly_and_round_trips_through_its_files(task, tmp_path):
    data = _labelled(task.kind)
    config = Config(kind=task.kind)
    head, channels, classes = task.head(config, data)
    assert len(classes) == channels or (channels == 1 and len(classes) == 2)
    palette = task.palette(data, channels)
    assert palette.shape == (max(channels, 2), 3)
    targets = task.targets(data, config.replace(head=head))
    probabilities = _one_hot(targets[0], channels)
    labels = task.labels(probabilities, config)
    summary, rows, _ = task.score(data, [labels, labels])
    assert summary[task.score_key] == pytest.approx(1.0) and len(rows) == 2
    task.save_mask(tmp_path / "mask.png", labels, palette)
    assert np.array_equal(np.asarray(open_image(tmp_path / "mask.png")), labels)
    tables = task.table_rows("a", data.images[0], labels)
    assert set(tables) == set(task.tables)
    for name, rows in tables.items():
        assert rows and all(list(row) == task.tables[name] for row in rows)
    assert task.draw(data.images[0], labels, palette).shape == data.images[0].shape


def test_nuclei_heads_and_class_weights_are_checked_by_the_task():
    data = _labelled("dsb2018")
    assert task_for("nuclei").head(Config(kind="dsb2018", head="binary"), data)[1] == 1
    with pytest.raises(ConfigError, match="nuclei take"):
        task_for("nuclei").head(Config(kind="dsb2018", head="multiclass"), data)
    with pytest.raises(ConfigError, match="class_weights"):
        task_for("tissue").head(Config(kind="tissue", class_weights=[1.0, 2.0]), _labelled("tissue"))


def test_no_module_decides_by_testing_the_kind_itself():
    """Modules ask ``task_for(config.kind)``; comparing a kind to a literal is the tasks' business."""
    package = Path(__file__).resolve().parents[1] / "unet"
    pattern = re.compile(r"""(kind|layout)\s*[!=]=\s*["'](dsb2018|tissue)["']""")
    found = [f"{path.name}:{number}" for path in sorted(package.glob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []
