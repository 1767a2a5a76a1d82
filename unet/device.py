"""Devices and numerics: precision policy, XLA, the distribution strategy, the environment."""

from __future__ import annotations

import contextlib
import ctypes
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


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for the next allocation instead of unmapping it.

    TensorFlow on a CPU takes each activation and gradient from malloc; glibc serves the large
    ones (above its mmap threshold, at most 32 MB) with a new mapping and unmaps it when freed,
    so every training step faults its buffers in again, page by page, in the kernel. With
    mappings off and trimming rare, the process reuses its heap. Linux with glibc only (elsewhere
    nothing changes); returns whether it applied. Measured in ``benchmarks/RESULTS.md``.
    """
    if platform.system() != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    m_trim_threshold, m_top_pad, m_mmap_max, m_arena_max = -1, -2, -4, -8  # <malloc.h>
    settings = ((m_mmap_max, 0), (m_trim_threshold, 1 << 30), (m_top_pad, 64 << 20), (m_arena_max, 2))
    return all(mallopt(option, value) == 1 for option, value in settings)


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
