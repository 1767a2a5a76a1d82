"""Loading datasets: layout detection, the NPY cache, the split into training and validation.

Both layouts (``dsb_format``: the DSB2018 Kaggle layout; ``tissue_format``: image/mask
folders) load into one :class:`~unet.dataset.Dataset`: RGB uint8 images of any size, a uint8
class map per image (nuclei: 0/1 union mask; tissue: class indices, ``ignore_label`` for
values that belong to no class) and, for nuclei, a uint16 instance map kept for evaluation.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from . import cache, dsb_format, tissue_format
from .dataset import Dataset
from .io import DataError, is_image_file, list_images, read_rgb

FORMATS = {fmt.KIND: fmt for fmt in (tissue_format, dsb_format)}  # detection order: images/ first


def detect_layout(path: str | Path) -> str:
    """'dsb2018' for the Kaggle layout (or its root), 'tissue' for images/ + masks/ folders."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such folder")
    for kind, fmt in FORMATS.items():
        if fmt.is_layout(path):
            return kind
    raise DataError(f"{path}: neither the DSB2018 layout (<id>/images/<id>.png) nor an "
                    "images/ + masks/ folder pair")


def resolve_kind(folder: str | Path, kind: str = "auto") -> str:
    """The folder's layout; an explicit ``kind`` that does not match it is an error."""
    try:
        detected = detect_layout(folder)
    except DataError:
        if kind == "auto":
            raise
        return kind  # decoding names what is missing
    if kind not in ("auto", detected):
        raise DataError(f"{folder}: this is a {detected} folder, not {kind} "
                        f"(use --kind {detected}, or --kind auto to detect it)")
    return detected


def find_splits(path: str | Path) -> tuple[Path, Path | None]:
    """(training folder, test folder or None) of a dataset root.

    A DSB2018 root gives ``stage1_train`` and ``stage1_test``; any other folder is its own
    training folder (validation is split from it).
    """
    path = Path(path)
    if (path / "stage1_train").is_dir():
        test = path / "stage1_test"
        return path / "stage1_train", test if test.is_dir() else None
    return path, None


def decode_dataset(folder: str | Path, kind: str = "auto", *, mask_mode: str = "auto", stray: str = "error",
                   ignore_label: int = 255, min_class_share: float = 0.0005, require_labels: bool = True,
                   progress: bool = True) -> Dataset:
    """Decode a dataset folder from its source files (no cache)."""
    folder = Path(folder)
    kind = resolve_kind(folder, kind)
    settings = dict(mask_mode=mask_mode, stray=stray, ignore_label=ignore_label, min_class_share=min_class_share)
    fmt = FORMATS[kind]
    return fmt.decode(find_splits(folder)[0], require_labels=require_labels, progress=progress,
                      **{key: settings[key] for key in fmt.SETTINGS})


def load_dataset(folder: str | Path, kind: str = "auto", *, npy_dir: str | Path = "npy", mask_mode: str = "auto",
                 stray: str = "error", ignore_label: int = 255, min_class_share: float = 0.0005,
                 require_labels: bool = True, progress: bool = True, verbose: bool = True) -> Dataset:
    """Load a dataset through the NPY cache, rebuilding it when sources or settings changed."""
    folder = Path(folder)
    kind = resolve_kind(folder, kind)
    folder = find_splits(folder)[0]
    settings = dict(mask_mode=mask_mode, stray=stray, ignore_label=ignore_label, min_class_share=min_class_share)
    fmt = FORMATS[kind]
    fp = cache.fingerprint(folder, kind, {key: settings[key] for key in fmt.SETTINGS}, fmt.source_files(folder))
    cache_dir = cache.cache_dir(Path(npy_dir), folder, kind)
    dataset = cache.read_cache(cache_dir, fp)
    if dataset is not None:
        if verbose:
            print(f"cache hit: {cache_dir}")
    else:
        if verbose:
            print(f"building cache {cache_dir} from {folder}")
        decoded = decode_dataset(folder, kind, mask_mode=mask_mode, stray=stray, ignore_label=ignore_label,
                                 min_class_share=min_class_share, require_labels=False, progress=progress)
        try:
            cache.write_cache(cache_dir, decoded, fp)
        except OSError as error:
            raise DataError(f"{cache_dir.parent}: cannot write the NPY cache ({error.strerror or error}); "
                            "choose a writable folder (--npy-dir, or npy_dir in the config)") from None
        dataset = cache.read_cache(cache_dir, fp)
        if dataset is None:
            raise RuntimeError(f"{cache_dir}: cache written but cannot be read back")
    if require_labels and dataset.masks is None:
        raise DataError(f"{folder}: no labels (no masks and no run-length rows); "
                        "pass require_labels=False to load images only")
    return dataset


def check_dataset(folder: str | Path, kind: str = "auto", **options) -> list[Dataset]:
    """Decode every file of a dataset (for a DSB2018 root, train and test); raise a DataError
    naming each bad file, else return the decoded datasets."""
    folder = Path(folder)
    kind = resolve_kind(folder, kind)
    datasets, problems = [], []
    train, test = find_splits(folder)
    for part, part_options in ((train, options), (test, {**options, "require_labels": False})):
        if part is None:
            continue
        try:
            datasets.append(decode_dataset(part, kind, **part_options))
        except DataError as error:
            problems += error.problems
    if problems:
        raise DataError(problems)
    return datasets


def image_modes(folder: str | Path) -> dict[str, int]:
    """Counts of the PIL modes of a dataset's image files (for summaries)."""
    folder = Path(folder)
    paths = (list(folder.glob("*/images/*")) + list(folder.glob("stage1_*/*/images/*"))
             + (list_images(folder / "images") if (folder / "images").is_dir() else []))
    modes: dict[str, int] = {}
    for path in paths:
        if is_image_file(path):
            with Image.open(path) as image:
                modes[image.mode] = modes.get(image.mode, 0) + 1
    return modes


def load_from_config(config, folder: str | Path | None = None, require_labels: bool = True,
                     progress: bool = True) -> Dataset:
    """``load_dataset`` with the data settings of a :class:`~unet.config.Config`."""
    return load_dataset(folder or config.data_dir, config.kind, npy_dir=config.npy_dir, mask_mode=config.mask_mode,
                        stray=config.stray, ignore_label=config.ignore_label, min_class_share=config.min_class_share,
                        require_labels=require_labels, progress=progress)


def load_folder(path: str | Path, config, require_labels: bool = False) -> Dataset:
    """The images (and labels, when present) of any folder: a DSB2018 root (its stage1_test,
    else stage1_train), a dataset folder in either layout, or a plain folder of images."""
    path = Path(path)
    try:
        layout = detect_layout(path)
    except DataError:
        if require_labels:
            raise
        layout = None
    if layout is None:
        files = list_images(path)
        if not files:
            raise DataError(f"{path}: no images to predict")
        return Dataset(config.kind, [p.stem for p in files], [read_rgb(p) for p in files], None, source=str(path))
    path = next((p for p in (path / "stage1_test", path / "stage1_train") if p.is_dir()), path)  # a DSB root
    return load_from_config(config.replace(kind=layout), path, require_labels=require_labels)


def split_for_training(dataset: Dataset, config) -> tuple[Dataset, Dataset]:
    """(training, validation) as the config says: the ids listed in ``config.val_list`` (a text
    file, one id per line, '#' comments), else a seeded ``val_fraction`` split."""
    if not config.val_list:
        return dataset.split(config.val_fraction, config.seed)
    path = Path(config.val_list)
    if not path.is_file():
        raise DataError(f"{path}: no such validation list (val_list)")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return dataset.split_by_ids([line for line in lines if line])
