"""The data scripts: the validation list and the learning-curve subset, on a synthetic sample."""

import subprocess
import sys
from pathlib import Path

from unet.synthetic import write_sample

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _run(*args) -> str:
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_training_subset_keeps_every_validation_id_and_a_share_of_the_others(tmp_path):
    write_sample(tmp_path / "data", seed=2, n_train=9, n_test=0, n_tissue=1)
    train = tmp_path / "data" / "dsb2018" / "stage1_train"
    val_list = tmp_path / "val.txt"
    val_list.write_text(_run(SCRIPTS / "make_validation_list.py", train, "--fraction", 0.34))
    val = {line for line in val_list.read_text().splitlines() if line and not line.startswith("#")}
    others = {p.name for p in train.iterdir()} - val
    assert val and others
    out = tmp_path / "subset" / "stage1_train"
    _run(SCRIPTS / "make_training_subset.py", train, val_list, 0.5, out)
    kept = {p.name for p in out.iterdir()}
    assert val <= kept and kept - val < others  # every validation id, a part of the rest
    assert all((out / name).resolve() == (train / name).resolve() for name in kept)
    _run(SCRIPTS / "make_training_subset.py", train, val_list, 0.5, tmp_path / "again")
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == sorted(kept)  # the seed fixes the draw
