"""One configuration object for a whole study, saved as ``config.json`` with every run."""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Config:
    """Every setting of data loading, model, training and inference.

    Keys are stable: a ``config.json`` written by an older version loads, unknown keys
    are reported and dropped, missing keys take their defaults.
    """

    # data
    kind: str = "dsb2018"  # 'dsb2018' (nuclei) or 'tissue' (semantic classes)
    data_dir: str = "dataset"
    npy_dir: str = "npy"
    val_fraction: float = 0.2
    seed: int = 42
    mask_mode: str = "auto"  # tissue masks: 'auto', 'P', 'L' or 'RGB'
    stray: str = "error"  # tissue values outside the classes: 'error' or 'ignore'
    ignore_label: int = 255
    min_class_share: float = 0.0005  # auto class detection: rarer values are strays

    color_mode: str = "auto"  # 'rgb', 'gray' (bright objects on dark, see training.model_input) or 'auto'

    # model
    head: str = "auto"  # 'auto', 'binary', 'boundary' (nuclei 3-class) or 'multiclass'
    contact_width: int = 3  # nuclei target: pixels this close to another nucleus are boundary; 0: ring only
    num_classes: int = 0  # set from the data when 0
    base_filters: int = 16
    depth: int = 4
    dropout: float = 0.2

    # training
    input_mode: str = "crop"  # 'crop' (native resolution) or 'resize' (fixed size)
    image_size: int = 256  # crop size, or the side of the resized images
    batch_size: int = 8
    epochs: int = 30
    steps_per_epoch: int = 0  # 0: one pass worth of crops over the training pixels
    learning_rate: float = 1e-3
    dice_weight: float = 1.0
    class_weights: list[float] | None = None
    augment: bool = True
    zoom_augment: float = 0.25  # crops rescaled by a random factor in [1/(1+z), 1+z]; 0: none
    early_stopping_patience: int = 12
    reduce_lr_patience: int = 5
    precision: str = "auto"  # 'auto', 'float32', 'mixed_bfloat16' or 'mixed_float16'
    xla: str = "auto"  # 'auto' (GPU only), 'on' or 'off'
    strategy: str = "auto"  # 'auto' (MirroredStrategy on >1 GPU), 'mirrored' or 'default'

    # inference
    tile_size: int = 256
    tile_overlap: float = 0.25
    tta: bool = True  # average the 8 flips and 90-degree rotations at prediction (8x the inference time)
    min_nucleus_area: int = 12

    # bookkeeping
    logs_dir: str = "logs"
    run_name: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        from .io import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            warnings.warn(f"config: ignoring unknown keys {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_parser(cls, name: str):
        """The function that turns command-line text into a value of the field ``name``."""
        default = getattr(cls(), name)
        if isinstance(default, bool):
            return lambda text: text.lower() in ("1", "true", "yes", "on")
        if name == "class_weights":
            return lambda text: [float(w) for w in text.split(",")]
        return type(default)
