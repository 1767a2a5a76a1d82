"""Command line: ``python -m unet {sample,check,train,refit,predict,evaluate,demo} ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .io import DataError


def _sample(args) -> int:
    from .synthetic import write_sample

    out = write_sample(args.out, seed=args.seed, n_train=args.n_train, n_test=args.n_test, n_tissue=args.n_tissue)
    print(f"synthetic sample written to {out}/dsb2018 (nuclei, Kaggle layout) and {out}/tissue (4 classes)")
    return 0


def _check(args) -> int:
    from .data import check_dataset, image_modes

    try:
        datasets = check_dataset(args.data, args.kind, mask_mode=args.mask_mode, stray=args.stray,
                                require_labels=not args.unlabeled, progress=not args.quiet)
    except DataError as error:
        print(f"{args.data}: {len(error.problems)} problem(s)", file=sys.stderr)
        for line in error.problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    for dataset in datasets:
        print(dataset.summary())
    print("  image modes: " + ", ".join(f"{m} x{n}" for m, n in sorted(image_modes(args.data).items())))
    print("OK")
    return 0


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per Config field (defaults from Config; ``--config`` loads a saved one)."""
    import dataclasses

    from .config import CHOICES, Config

    parser.add_argument("--config", type=Path, help="start from this config.json")
    for item in dataclasses.fields(Config):
        if item.name in ("extra",):
            continue
        flag = "--" + item.name.replace("_", "-")
        default = getattr(Config(), item.name)
        weights = item.name == "class_weights"
        parser.add_argument(flag, type=Config.field_parser(item.name), default=None, choices=CHOICES.get(item.name),
                            metavar="W0,W1,..." if weights else "BOOL" if isinstance(default, bool) else None,
                            help="per-class loss weights" if weights else f"(default {default!r})")


def _config_from_args(args):
    from .config import Config

    config = Config.load(args.config) if args.config else Config()
    changes = {k: v for k, v in vars(args).items() if k in config.to_dict() and v is not None}
    return config.replace(**changes)


def _train(args) -> int:
    from .data import detect_layout, load_from_config, split_for_training
    from .training import train
    from .visuals import plot_curves

    config = _config_from_args(args)
    if args.kind_auto:
        config = config.replace(kind=detect_layout(config.data_dir))
    dataset = load_from_config(config)
    print(dataset.summary())
    train_set, val_set = split_for_training(dataset, config)
    run = train(config, train_set, val_set)
    plot_curves(run.history, run.run_dir / "curves.png")
    print(f"run folder: {run.run_dir} (best.keras, last.keras, config.json, history.csv, curves.png, training.gif)")
    print(f"view it: {run.tensorboard_command}")
    return 0


def _refit(args) -> int:
    from .data import load_from_config, split_for_training
    from .run import Run
    from .training import refit, validated_schedule

    run = Run.load(args.run_dir)
    changes = {k: v for k, v in (("data_dir", args.data_dir), ("steps_per_epoch", args.steps_per_epoch)) if v}
    run = run.with_settings(**changes)
    validated_schedule(run)  # a run that cannot be refitted fails here, before its data loads
    train_set, val_set = split_for_training(load_from_config(run.config), run.config)
    final = refit(run, train_set, val_set)
    print(f"run folder: {final.run_dir} ({len(train_set) + len(val_set)} images, {len(final.history['loss'])} "
          f"epochs, thresholds of {run.run_dir.name}); predict with --model {final.run_dir}")
    return 0


def _predict(args) -> int:
    from .data import load_folder
    from .io import claim_output_folder
    from .outputs import predict_folder, written_files
    from .run import Run

    if (args.images is None) == (args.image is None):
        raise DataError("give --images FOLDER (a folder of images) or --image FILE (one large image), not both")
    if args.image is not None:
        return _predict_large(args)
    if not args.images.is_dir():
        raise DataError(f"{args.images}: {'is a file, not' if args.images.exists() else 'no such'} folder "
                        "(--images takes a folder of images or a dataset folder)")
    claim_output_folder(args.out, [args.images])  # refused before the model loads
    run = Run.load(args.model)
    changes = {k: v for k, v in (("tile_size", args.tile_size), ("tile_overlap", args.tile_overlap),
                                 ("batch_size", args.batch_size), ("min_nucleus_area", args.min_area),
                                 ("npy_dir", args.npy_dir), ("tta", args.tta)) if v is not None}
    run = run.with_settings(**changes)
    dataset = load_folder(args.images, run.config)
    predict_folder(run, dataset, args.out, progress=not args.quiet, inputs=[args.images], scheduler=args.scheduler,
                   workers=args.workers)
    print(f"{len(dataset)} images predicted into {args.out}: {written_files(run.config.kind)}")
    return 0


def _predict_large(args) -> int:
    from .large_images import predict_large_image

    settings = {k: v for k, v in (("tile_size", args.tile_size), ("tile_overlap", args.tile_overlap),
                                  ("batch_size", args.batch_size), ("min_nucleus_area", args.min_area),
                                  ("tta", args.tta)) if v is not None}
    summary = predict_large_image(args.model, args.image, args.out, args.block_size, args.halo, args.level,
                                  args.scheduler, args.workers, progress=not args.quiet,
                                  probabilities=args.probabilities, **settings)
    found = f", {summary['nuclei']} nuclei (nuclei.csv)" if summary["nuclei"] is not None else ""
    print(f"{args.image} predicted into {args.out} ({summary['blocks_computed']} of {summary['blocks']} blocks "
          f"computed, {summary['seconds']:.0f} s{found}); overview.png shows it")
    if summary["cut_components"]:
        print(f"warning: {summary['cut_components']} nuclei reach beyond the halo of their block; a larger "
              "--halo makes their ids agree across blocks")
    return 0


def _evaluate(args) -> int:
    import json

    from .config import Config
    from .data import detect_layout, load_folder
    from .evaluation import format_table
    from .io import write_csv, write_text_atomic
    from .outputs import evaluate_folder
    from .visuals import plot_confusion

    kind = detect_layout(args.truth) if args.kind == "auto" else args.kind
    config = Config(kind=kind, mask_mode=args.mask_mode, stray=args.stray, npy_dir=args.npy_dir or "npy")
    truth = load_folder(args.truth, config, require_labels=True)
    folder = truth.source
    summary, rows, confusion = evaluate_folder(args.pred, truth)
    write_text_atomic(args.pred / "metrics.json", json.dumps(summary, indent=2) + "\n")
    write_csv(args.pred / "per_image.csv", rows, list(rows[0]))
    if confusion is not None:
        plot_confusion(confusion, truth.class_names, args.pred / "confusion.png")
    print(f"{kind}: {len(rows)} images of {folder}")
    print(format_table(summary))
    print(f"written: {args.pred / 'metrics.json'}, {args.pred / 'per_image.csv'}"
          + (f", {args.pred / 'confusion.png'}" if confusion is not None else ""))
    return 0


DEMO_PARAMETERS = {  # sized so that both tasks finish within 10 minutes on 2 CPU cores (threshold tuning,
    # about 70 s more, would exceed that; it is made for validation sets larger than the demo's 10 images)
    "nuclei": {"IMAGE_SIZE": 128, "EPOCHS": 20, "STEPS_PER_EPOCH": 40, "BATCH_SIZE": 8, "BASE_FILTERS": 16,
               "TUNE_THRESHOLDS": False},
    "tissue": {"IMAGE_SIZE": 128, "EPOCHS": 10, "STEPS_PER_EPOCH": 40, "BATCH_SIZE": 8, "BASE_FILTERS": 16},
}


def _demo(args) -> int:
    import json

    from .study import run_demo, summary_table

    summaries = []
    for task in args.tasks:
        parameters = {**DEMO_PARAMETERS[task], "LAUNCH_TENSORBOARD": False, "OUTPUT_DIR": str(args.output),
                      **dict(args.set or [])}
        run_demo(args.notebook, args.output, tasks=[task], parameters=parameters)
        summary = Path(parameters["OUTPUT_DIR"]) / f"{task}-summary.json"
        if summary.is_file():
            summaries.append(json.loads(summary.read_text()))
    print(f"\nexecuted notebooks: {args.output}/Unet-<task>.ipynb; runs under logs/, predictions under {args.output}/")
    print(summary_table(summaries))
    print("view training: make tensorboard  (or: .venv/bin/tensorboard --logdir logs --host 127.0.0.1)")
    return 0


def _parameter(text: str):
    import ast

    name, _, value = text.partition("=")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    from .config import CHOICES

    parser.add_argument("--kind", default="auto", choices=["auto", *CHOICES["kind"]])
    parser.add_argument("--mask-mode", default="auto", choices=["auto", "P", "L", "RGB"],
                        help="tissue mask format (default: detected)")
    parser.add_argument("--stray", default="error", choices=["error", "ignore"],
                        help="tissue mask values outside the classes: fail, or map to the ignore label")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump); ``--help`` shows the options."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def _add_predict_command(commands) -> None:
    predict = commands.add_parser("predict", help="predict a folder of images with a trained model")
    predict.add_argument("--model", required=True, type=Path, help="best.keras or last.keras of a run")
    predict.add_argument("--images", type=Path, help="a folder of images, or a dataset folder in either layout")
    predict.add_argument("--image", type=Path, help="one image larger than memory (TIFF/OME-TIFF, zarr/OME-Zarr, "
                         "PNG/JPEG), predicted block by block into --out OUT.zarr")
    predict.add_argument("--out", required=True, type=Path)
    predict.add_argument("--block-size", type=int, default=2048, help="--image: block side in pixels")
    predict.add_argument("--halo", type=int, default=128, help="--image, nuclei: context around each block (px)")
    predict.add_argument("--level", type=int, default=0, help="--image: pyramid level (0: full resolution)")
    predict.add_argument("--probabilities", action="store_true",
                         help="--image, tissue: also write the class probabilities (OUT.zarr/probabilities)")
    predict.add_argument("--scheduler", help="address of a dask.distributed scheduler: blocks (--image) or images "
                         "(--images) run as its tasks (default: in this process)")
    predict.add_argument("--workers", type=int, default=1, help="local threads for the tasks")
    predict.add_argument("--tile-size", type=int)
    predict.add_argument("--tile-overlap", type=float)
    predict.add_argument("--batch-size", type=int)
    predict.add_argument("--min-area", type=int, help="smallest nucleus kept, in pixels")
    predict.add_argument("--tta", action=argparse.BooleanOptionalAction,
                         help="average over the 8 flips and 90-degree rotations (default: the run's config)")
    predict.add_argument("--npy-dir", type=Path)
    predict.add_argument("--quiet", action="store_true")
    predict.set_defaults(run=_predict)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m unet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("sample", help="write the synthetic default dataset")
    sample.add_argument("--out", required=True, type=Path)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--n-train", type=int, default=32)
    sample.add_argument("--n-test", type=int, default=12)
    sample.add_argument("--n-tissue", type=int, default=16)
    sample.set_defaults(run=_sample)

    check = commands.add_parser("check", help="validate a dataset folder and print a summary")
    check.add_argument("data", type=Path)
    _add_data_options(check)
    check.add_argument("--unlabeled", action="store_true", help="images without masks are fine")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(run=_check)

    training = commands.add_parser("train", help="train a U-Net on a dataset folder")
    _add_config_options(training)
    training.add_argument("--data", dest="data_dir", help="dataset folder (DSB2018 root or stage1_train, or "
                          "an images/ + masks/ folder)")
    training.set_defaults(run=_train)

    refitting = commands.add_parser("refit", help="train a finished run's recipe again on all its images "
                                    "(training + validation), with its epochs, learning rates and thresholds")
    refitting.add_argument("run_dir", metavar="RUN", type=Path, help="a finished run folder (logs/<run>)")
    refitting.add_argument("--data", dest="data_dir", help="its dataset folder, when moved (default: the run's)")
    refitting.add_argument("--steps-per-epoch", type=int, help="for a run from before 2026-12-03: its steps/epoch")
    refitting.set_defaults(run=_refit)

    _add_predict_command(commands)

    evaluate = commands.add_parser("evaluate", help="score predictions against ground truth")
    evaluate.add_argument("--pred", required=True, type=Path, help="the --out folder of predict")
    evaluate.add_argument("--truth", required=True, type=Path, help="a labelled dataset folder (either layout)")
    _add_data_options(evaluate)
    evaluate.add_argument("--npy-dir", type=Path)
    evaluate.set_defaults(run=_evaluate)

    demo = commands.add_parser("demo", help="execute Unet.ipynb headless for the nuclei and the tissue task")
    demo.add_argument("--notebook", type=Path, default=Path("Unet.ipynb"))
    demo.add_argument("--output", type=Path, default=Path("output"))
    demo.add_argument("--tasks", nargs="+", default=["nuclei", "tissue"], choices=["nuclei", "tissue"])
    demo.add_argument("--set", action="append", type=_parameter, metavar="NAME=VALUE",
                      help="override a notebook parameter (repeatable), e.g. --set EPOCHS=3")
    demo.set_defaults(run=_demo)
    for command in commands.choices.values():
        command.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command. A user's mistake (bad data, option, file or folder) ends in one line per
    problem on stderr and exit code 1 (argparse's own errors: 2); ``--debug`` shows tracebacks."""
    from .config import ConfigError

    args = build_parser().parse_args(argv)
    if args.command == "train":  # --kind auto (the default here) detects the layout
        args.kind_auto = args.kind in (None, "auto")
        args.kind = None if args.kind_auto else args.kind
    try:
        return args.run(args)
    except DataError as error:
        if args.debug:
            raise
        print("\n".join(f"error: {line}" for line in error.problems), file=sys.stderr)
    except ConfigError as error:
        if args.debug:
            raise
        option = "--" + error.field.replace("_", "-")
        print(f"error: {option}{str(error)[len(error.field):]}", file=sys.stderr)
    except OSError as error:  # permissions, a full disk, a missing file: the system's words and the path
        if args.debug or error.errno is None:
            raise
        print(f"error: {error.filename or ''}{': ' if error.filename else ''}{error.strerror}", file=sys.stderr)
    return 1
