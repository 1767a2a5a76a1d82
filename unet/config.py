"""One configuration object for a whole study, saved as ``config.json`` with every run."""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

CHOICES = {  # fields with a fixed set of values
    "kind": ("dsb2018", "tissue"),
    "mask_mode": ("auto", "P", "L", "RGB"),
    "stray": ("error", "ignore"),
    "color_mode": ("auto", "rgb", "gray", "hematoxylin"),
    "head": ("auto", "binary", "boundary", "centre", "multiclass"),
    "input_mode": ("crop", "resize"),
    "precision": ("auto", "float32", "mixed_bfloat16", "mixed_float16"),
    "xla": ("auto", "on", "off"),
    "strategy": ("auto", "mirrored", "default"),
    "lr_schedule": ("plateau", "cosine"),
    "crop_sampling": ("area", "sqrt_area", "image"),
}
POSITIVE = ("image_size", "batch_size", "epochs", "base_filters", "depth", "tile_size")
NON_NEGATIVE = ("steps_per_epoch", "num_classes", "contact_width", "min_nucleus_area", "early_stopping_patience",
                "reduce_lr_patience")
FRACTIONS = {"val_fraction": (0.0, 1.0), "dropout": (0.0, 1.0), "tile_overlap": (0.0, 1.0),  # [low, high)
             "min_class_share": (0.0, 1.0), "seed_threshold": (0.0, 1.0), "foreground_threshold": (0.0, 1.0),
             "stain_augment": (0.0, 1.0), "ema_momentum": (0.0, 1.0)}
NUMBERS = {"learning_rate": (1e-12, 10.0), "dice_weight": (0.0, 1e3), "zoom_augment": (0.0, 10.0),  # [low, high]
           "ignore_label": (0, 255), "max_minutes": (0.0, 1e6), "nucleus_diameter": (0.0, 1e3)}


class ConfigError(ValueError):
    """An invalid setting; ``field`` names it (the command line shows it as ``--field-name``)."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


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
    val_list: str = ""  # a file of validation ids (one per line) instead of the seeded val_fraction split
    seed: int = 42
    mask_mode: str = "auto"  # tissue masks: 'auto', 'P', 'L' or 'RGB'
    stray: str = "error"  # tissue values outside the classes: 'error' or 'ignore'
    ignore_label: int = 255
    min_class_share: float = 0.0005  # auto class detection: rarer values are strays

    color_mode: str = "auto"  # 'rgb', 'gray' (bright objects on dark), 'hematoxylin' (gray; stained images: their
    # hematoxylin density; see preprocess.model_input) or 'auto'

    # model
    head: str = "auto"  # 'auto', 'binary', 'boundary' (nuclei 3-class), 'centre' (and centres: 4) or 'multiclass'
    nucleus_diameter: float = 0.0  # nuclei: > 0: each image resized so that its median nucleus is this many
    # pixels across (training: by its true nuclei; prediction: by the model's estimate; see scale); 0: native
    contact_width: int = 3  # nuclei target: pixels this close to another nucleus are boundary; 0: ring only
    num_classes: int = 0  # set from the data when 0
    sqrt_channels: bool = False  # also feed the model the square root of each normalised input channel, which
    # lifts faint objects next to bright ones (see model.SqrtStretch)
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
    ema_momentum: float = 0.0  # > 0: validate, checkpoint and predict with the moving average of the weights
    # (each step: average = m * average + (1 - m) * weights; Polyak averaging); 0: the weights themselves
    dice_weight: float = 1.0
    class_weights: list[float] | None = None
    augment: bool = True
    zoom_augment: float = 0.25  # crops rescaled by a random factor in [1/(1+z), 1+z]; 0: none
    stain_augment: float = 0.0  # colour images: each stain's amount (hematoxylin, eosin, DAB) scaled by a random
    # factor in [1 - s, 1 + s] before the colour mode (see pipeline.stain_jitter); 0: none
    degrade_augment: bool = False  # also nnU-Net's intensity degradations: gamma, noise, low resolution
    # (see pipeline.degrade_augment)
    crop_sampling: str = "area"  # an image is cropped with probability proportional to its 'area' (every pixel
    # equally likely), to 'sqrt_area', or the same for every 'image' (as the metric weighs them)
    max_minutes: float = 0.0  # training time budget: stop cleanly when spent (best model kept); 0: none
    early_stopping_patience: int = 12
    reduce_lr_patience: int = 5
    lr_schedule: str = "plateau"  # 'plateau': halve on a validation-loss plateau; 'cosine': decay to 0 at the
    # end of the epochs or of the time budget (max_minutes), whichever comes first
    precision: str = "auto"  # 'auto', 'float32', 'mixed_bfloat16' or 'mixed_float16'
    xla: str = "auto"  # 'auto' (GPU only), 'on' or 'off'
    strategy: str = "auto"  # 'auto' (MirroredStrategy on >1 GPU), 'mirrored' or 'default'

    # inference
    tile_size: int = 256
    tile_overlap: float = 0.25
    tta: bool = True  # average the 8 flips and 90-degree rotations at prediction (8x the inference time)
    min_nucleus_area: int = 12
    seed_threshold: float = 0.5  # nuclei: interior probability that makes a watershed seed
    foreground_threshold: float = 0.5  # nuclei: interior + boundary probability that is nucleus
    tune_thresholds: bool = True  # after training, choose the three above on the validation images

    # bookkeeping
    logs_dir: str = "logs"
    run_name: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise a ConfigError naming the first invalid field and what it may be."""
        for item in dataclasses.fields(self):  # a JSON "false" string would otherwise count as true
            if isinstance(item.default, bool) and not isinstance(getattr(self, item.name), bool):
                raise ConfigError(item.name, f"{getattr(self, item.name)!r} must be true or false")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"{getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in POSITIVE:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"{value!r} must be a positive integer")
        for name in NON_NEGATIVE:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(name, f"{value!r} must be a non-negative integer")
        for name, (low, high) in FRACTIONS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
                raise ConfigError(name, f"{value!r} must be a number in [{low:g}, {high:g})")
        for name, (low, high) in NUMBERS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ConfigError(name, f"{value!r} must be a number in [{low:g}, {high:g}]")
        stride = 2**self.depth
        for name in ("image_size", "tile_size"):
            if getattr(self, name) % stride:
                raise ConfigError(name, f"{getattr(self, name)} is not a multiple of 2**depth = {stride} "
                                        f"(the U-Net halves the size {self.depth} times)")
        if self.stain_augment and self.input_mode == "resize":
            raise ConfigError("stain_augment", "jitters native-resolution crops: it needs input_mode 'crop'")
        if self.nucleus_diameter and self.input_mode != "crop":
            raise ConfigError("nucleus_diameter", "rescales images cropped at their own size: it needs input_mode 'crop'")
        if self.class_weights is not None and (
                not isinstance(self.class_weights, list) or not all(isinstance(w, (int, float)) and w >= 0
                                                                    for w in self.class_weights)):
            raise ConfigError("class_weights", f"{self.class_weights!r} must be a list of non-negative numbers")

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
        """A saved config; a file that is not a JSON object or holds an invalid value raises a
        ConfigError naming the file and the key."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError("config", f"{path}: not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ConfigError("config", f"{path}: expected a JSON object of settings")
        try:
            return cls.from_dict(values)
        except ConfigError as error:
            raise ConfigError(error.field, f"{path}: key {error.field!r}: {str(error).split(': ', 1)[1]}") from None
        except TypeError as error:
            raise ConfigError("config", f"{path}: {error}") from None

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_parser(cls, name: str):
        """The function that turns command-line text into a value of the field ``name``."""
        default = getattr(cls(), name)
        if isinstance(default, bool):
            return parse_bool
        if name == "class_weights":
            return parse_weights
        return type(default)


def parse_bool(text: str) -> bool:
    """'true'/'false', 'yes'/'no', 'on'/'off', '1'/'0' (any case); anything else is an error."""
    from argparse import ArgumentTypeError

    words = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
    if text.lower() not in words:
        raise ArgumentTypeError(f"{text!r} is not a boolean (true/false, yes/no, on/off, 1/0)")
    return words[text.lower()]


def parse_weights(text: str) -> list[float]:
    """'1,2.5,3' -> [1.0, 2.5, 3.0]."""
    from argparse import ArgumentTypeError

    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
