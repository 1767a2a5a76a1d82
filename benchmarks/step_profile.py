"""Where a training step's time goes: TensorFlow's profiler over the project's training step,
its op times summed by kind.

    .venv/bin/python benchmarks/step_profile.py                  # base 16, batch 8, 256x256, 1 channel
    .venv/bin/python benchmarks/step_profile.py --filters 32 --channels 3

The step is the project's (its model, loss, metrics, Adam, the precision 'auto' picks) on one
fixed synthetic batch, so the input pipeline takes no part (``throughput.py`` times whole
``fit`` calls with it). After a warm-up the profiler records ``--steps`` steps; every op the
TensorFlow executor ran is put in a group (convolutions forward, their two gradients, batch
norm, ...) and its time is divided by the steps. Ops can run side by side on the cores, so the
groups can add up to more than the wall-clock step, which is printed beside. Needs no
dependency beyond TensorFlow (the profile is read with its own protocol buffers).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

GROUPS = {  # the first group whose words appear in the op's type, else its layer, names it
    "convolution: weight gradient": ("BackpropFilter",),
    "convolution: input gradient": ("BackpropInput",),
    "convolution: forward": ("Conv2D",),
    "batch norm: gradient": ("FusedBatchNormGrad",),
    "batch norm: forward": ("FusedBatchNorm",),
    "relu and its gradient": ("Relu",),
    "max pooling and its gradient": ("MaxPool",),
    "optimizer (Adam)": ("ApplyAdam", "AssignAddVariable", "AssignSubVariable", "AssignVariable"),
    "casts (mixed precision)": ("Cast",),
    "concatenation": ("Concat", "Slice"),
    "random numbers (dropout)": ("Random", "Bitcast"),
}
LAYER_GROUPS = {"dropout": "dropout: masks and products", "loss": "loss, metrics and their gradients",
                "metric": "loss, metrics and their gradients", "probabilities": "softmax head"}
CALLS = ("PartitionedCall", "StatefulPartitionedCall", "While", "If", "_Recv", "_Send")


def group_of(name: str, kind: str) -> str:
    """The group of an op (``name``: its graph path, ``kind``: its type)."""
    if "Conv2D" in kind and "Backprop" not in kind and "gradient_tape" in name:
        return "convolution: input gradient"  # a transposed convolution's input gradient is a convolution
    for group, words in GROUPS.items():
        if any(word in kind for word in words):
            return group
    lowered = name.lower()
    for word, group in LAYER_GROUPS.items():
        if word in lowered:
            return group
    if "gradient" in lowered:
        return "other gradients"
    return "other"


def op_times(xspace_path: Path) -> dict[tuple[str, str], float]:
    """Seconds per (op name, op type), summed over the executor's events of a profile."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(xspace_path.read_bytes())
    times = collections.Counter()
    for plane in space.planes:
        names = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                label = names[event.metadata_id].name
                name, _, kind = label.rpartition(":")
                if name and "::" not in label and kind not in CALLS:  # an op ('path:type'), not the executor's own
                    times[name, kind] += event.duration_ps * 1e-12
    return dict(times)


def profile_steps(filters: int, batch: int, size: int, channels: int, steps: int, depth: int = 4,
                  precision: str = "auto") -> dict:
    """Profile ``steps`` training steps of the project's model on a fixed batch."""
    import keras
    import numpy as np
    import tensorflow as tf

    from unet.device import precision_policy, resolve_precision
    from unet.losses import SegmentationLoss, make_metrics
    from unet.model import build_unet

    precision = resolve_precision(precision)
    rng = np.random.default_rng(0)
    images = rng.random((batch, size, size, channels), dtype=np.float32)
    targets = rng.integers(0, 3, (batch, size, size, 1), dtype=np.uint8)
    with precision_policy(precision):
        model = build_unet(channels, 3, filters, depth)
        model.compile(keras.optimizers.Adam(1e-3), SegmentationLoss(3), metrics=make_metrics(3, ["b", "i", "e"]))
        data = tf.data.Dataset.from_tensors((images, targets)).repeat()
        model.fit(data, epochs=1, steps_per_epoch=3, verbose=0)  # tracing and the first, slower steps
        with tempfile.TemporaryDirectory() as folder:
            tf.profiler.experimental.start(folder)
            start = time.perf_counter()
            model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
            seconds = time.perf_counter() - start
            tf.profiler.experimental.stop()
            times = op_times(next(Path(folder).rglob("*.xplane.pb")))
    groups = collections.Counter()
    for (name, kind), spent in times.items():
        groups[group_of(name, kind)] += spent / steps
    return {"precision": precision, "filters": filters, "batch": batch, "size": size, "channels": channels,
            "steps": steps, "wall_ms_per_step": 1e3 * seconds / steps,
            "groups_ms_per_step": {group: 1e3 * spent for group, spent in groups.most_common()},
            "top_ops_ms_per_step": {f"{name}:{kind}": 1e3 * spent / steps for (name, kind), spent in
                                    collections.Counter(times).most_common(15)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--channels", type=int, default=1, help="1: gray, the DSB2018 default input")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "mixed_bfloat16"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = profile_steps(args.filters, args.batch, args.size, args.channels, args.steps, args.depth,
                           args.precision)
    total = sum(result["groups_ms_per_step"].values())
    print(f"base {args.filters}, batch {args.batch}, {args.size}x{args.size}x{args.channels}, {result['precision']}: "
          f"{result['wall_ms_per_step']:.0f} ms per step (wall clock), {total:.0f} ms of op time")
    print(f"{'group':<36} {'ms/step':>8} {'share':>6}")
    for group, ms in result["groups_ms_per_step"].items():
        print(f"{group:<36} {ms:8.1f} {ms / total:6.1%}")
    print("\nlongest ops (ms per step):")
    for op, ms in result["top_ops_ms_per_step"].items():
        print(f"  {ms:7.1f}  {op}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
