"""Devices and numerics: precision policy, XLA, the distribution strategy, the environment."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def resolve_precision(policy: str = "auto") -> str:
    """'auto': mixed_float16 on a GPU, mixed_bfloat16 on a CPU with bf16 (AVX512-BF16/AMX), else float32."""
    import tensorflow as tf

    if policy != "auto":
        return policy
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_supports_bf16() else "float32"


def resolve_xla(setting: str = "auto") -> str:
    """'on' or 'off'; 'auto' is on with a GPU only (XLA is 6-9x slower on the reference CPU)."""
    import tensorflow as tf

    if setting == "auto":
        return "on" if tf.config.list_physical_devices("GPU") else "off"
    return setting


def make_strategy(setting: str = "auto"):
    """MirroredStrategy over all GPUs when there are several (or when asked), else the default."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if setting == "mirrored" or (setting == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


@contextlib.contextmanager
def precision_policy(name: str):
    """Set Keras's global dtype policy inside the block only (models keep the policy they were built with)."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def environment() -> dict:
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")], "cpu_bf16": cpu_supports_bf16(),
            "cores": os.cpu_count()}
