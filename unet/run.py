"""A run folder and what it holds: the model, its resolved config, the tuned thresholds.

``Run.load(folder)`` reads a run back exactly as training wrote it (``best.keras``,
``config.json``, ``thresholds.json``, ``history.csv``); ``run.predict(image)`` gives the
probabilities and labels of one image. Run folders are created exclusively and locked while
a process trains in them.
"""

from __future__ import annotations

import contextlib
import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import Config
from .io import DataError

MODEL_FILE, CONFIG_FILE, HISTORY_FILE, SUMMARY_FILE = "best.keras", "config.json", "history.csv", "summary.json"
_MODELS: dict[str, object] = {}  # per process: models read by Run.from_spec, by file


@dataclass
class Run:
    """A trained model with its run folder, resolved config (tuned thresholds applied) and history."""

    run_dir: Path
    model: object
    config: Config
    history: dict = field(default_factory=dict)
    seconds: float = 0.0
    model_path: Path | None = None  # the .keras file the model was read from (Run.load)

    @classmethod
    def load(cls, path: str | Path) -> "Run":
        """The run of a folder (its ``best.keras``) or of a ``.keras`` file, with the
        ``config.json`` beside it; old config files load, or fail naming the key."""
        import keras

        from . import losses, model as _model  # noqa: F401  (registers the custom objects)
        from .preprocess import Preprocessor
        from .tuning import apply_thresholds

        path = Path(path)
        path = path / MODEL_FILE if path.is_dir() else path
        if not path.is_file():
            raise DataError(f"{path}: no such model file (give a run folder or its best.keras / last.keras)")
        config_path = path.parent / CONFIG_FILE
        if not config_path.is_file():
            raise DataError(f"{config_path}: missing; the run's config.json is needed beside the model")
        config = Config.load(config_path)
        try:
            model = keras.saving.load_model(path, safe_mode=True, compile=False)
        except Exception as error:  # Keras raises ValueError, OSError, zipfile errors, ... for foreign files
            raise DataError(f"{path}: not a Keras model saved by this project ({type(error).__name__}: "
                            f"{str(error).splitlines()[0] if str(error) else 'unreadable'})") from None
        if model.input_shape[-1] != Preprocessor.for_config(config).channels:  # runs from before color_mode
            config = config.replace(color_mode="gray" if model.input_shape[-1] == 1 else "rgb")
        history_path = path.parent / HISTORY_FILE
        history = read_history(history_path) if history_path.is_file() else {}
        return cls(path.parent, model, apply_thresholds(config, path.parent), history, model_path=path)

    def spec(self) -> tuple[str, Config]:
        """What another process needs to rebuild this run (``Run.from_spec``): the model file and
        the config with every setting changed here."""
        if self.model_path is None:
            raise ValueError("a run trained in this process: save it and Run.load it to send it to workers")
        return str(self.model_path), self.config

    @classmethod
    def from_spec(cls, spec: tuple[str, Config]) -> "Run":
        """The run of ``spec``; each process reads a model file once."""
        path, config = spec
        if path not in _MODELS:
            _MODELS[path] = cls.load(path).model
        return cls(Path(path).parent, _MODELS[path], config, model_path=Path(path))

    @property
    def class_names(self) -> list[str]:
        return list(self.config.extra.get("class_names") or [])

    @property
    def palette(self) -> np.ndarray:
        """The classes' colours (nuclei: background, interior, boundary)."""
        return np.array(self.config.extra.get("palette") or [[0, 0, 0]], np.uint8)

    @property
    def task(self):
        from .tasks import task_for

        return task_for(self.config.kind)

    def predict(self, image: np.ndarray, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, labels) of one image at native resolution."""
        from .inference import predict_image

        return predict_image(self.model, self.config, image, progress)

    def with_settings(self, **changes) -> "Run":
        """The same model with inference settings changed (tta, tile_size, min_nucleus_area, ...)."""
        return Run(self.run_dir, self.model, self.config.replace(**changes), self.history, self.seconds,
                   self.model_path)

    @property
    def tensorboard_command(self) -> str:
        return f"tensorboard --logdir {self.run_dir.parent} --host 127.0.0.1"


def run_folder(config: Config) -> Path:
    """The run's folder under ``logs_dir``, created now.

    Without ``run_name``: a new ``<kind>-<date>-<time>`` folder (``-2``, ``-3``, ... when the name
    is taken), created exclusively, so two runs started in the same second never share one.
    With ``run_name``: that folder, new or holding an interrupted run to resume; a folder whose
    run has finished is refused rather than overwritten.
    """
    logs = Path(config.logs_dir)
    logs.mkdir(parents=True, exist_ok=True)
    if config.run_name:
        folder = logs / config.run_name
        if (folder / SUMMARY_FILE).is_file():
            raise DataError(f"{folder}: holds a finished run; choose another run name (or delete the folder)")
        folder.mkdir(exist_ok=True)
        return folder
    stem = f"{config.kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    for number in range(1, 1000):
        folder = logs / (stem if number == 1 else f"{stem}-{number}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise DataError(f"{logs}: no free run folder name for {stem}")


@contextlib.contextmanager
def run_lock(folder: Path):
    """Hold ``folder/.lock`` for the block; a second process training into the same folder is refused."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks
        yield
        return
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"{folder}: another training process is using this run folder") from None
        yield


def read_history(path: str | Path) -> dict[str, list[float]]:
    """``history.csv`` as columns of floats (the 'epoch' column included)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {key: [float(row[key]) for row in rows if row.get(key) not in (None, "")] for key in (rows[0] if rows else {})}
