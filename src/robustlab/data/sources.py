"""The dataset registry, ``load_dataset``, and where dataset files are looked for.

A dataset directory is resolved in this order: an explicit ``data_dir`` (or ``data_dir/<name>``),
then ``$ROBUSTLAB_DATA/<name>``, then ``~/.cache/robustlab/<name>``, then any system directory the
dataset knows (the Debian ``dataset-fashion-mnist`` package). ``download=True`` fetches into the
first of these that is not a system directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from robustlab.data.dataset import ArrayDataset
from robustlab.data.registry import DATASETS
from robustlab.errors import DataError, RobustlabError
from robustlab.validation import check_int

ENV_VAR = "ROBUSTLAB_DATA"
SPLITS = ("train", "test")

F = TypeVar("F")


class DatasetLoader(Protocol):
    def __call__(
        self,
        split: str = "train",
        data_dir: str | os.PathLike | None = None,
        download: bool = False,
        limit: int | None = None,
    ) -> ArrayDataset: ...


def dataset_loader(name: str, *, help: str | None = None) -> Callable[[Callable], DatasetLoader]:
    """Register a loader under ``name``, wrapping it with the checks every loader shares.

    The wrapped function receives a validated ``split``, ``data_dir`` as a ``Path`` (or None),
    ``download`` as a bool and a validated ``limit``; its result is validated before returning.
    """

    def wrap(fn: Callable[..., ArrayDataset]) -> DatasetLoader:
        def load(
            split: str = "train",
            data_dir: str | os.PathLike | None = None,
            download: bool = False,
            limit: int | None = None,
        ) -> ArrayDataset:
            if split not in SPLITS:
                raise RobustlabError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
            if limit is not None:
                check_int(limit, "limit", minimum=1)
            root = Path(data_dir).expanduser() if data_dir is not None else None
            ds = fn(split=split, data_dir=root, download=bool(download), limit=limit)
            return ds.validate()

        # Copy the identity by hand: functools.wraps would also set __wrapped__, and then
        # inspect.signature would report fn's internal signature instead of the public one.
        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(load, attr, getattr(fn, attr))
        DATASETS.register(name, load, help=help)
        return load

    return wrap


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    limit: int | None = None,
) -> ArrayDataset:
    """Load split ``"train"`` or ``"test"`` of a registered dataset (first ``limit`` samples)."""
    return DATASETS.get(name)(split=split, data_dir=data_dir, download=download, limit=limit)


def candidate_dirs(
    name: str, data_dir: Path | None, system_dirs: Sequence[Path] = ()
) -> list[Path]:
    """The directories searched for ``name``, in order; the first is the download target."""
    if data_dir is not None:
        return [data_dir, data_dir / name]
    dirs = []
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        dirs.append(Path(env).expanduser() / name)
    dirs.append(Path.home() / ".cache" / "robustlab" / name)
    dirs.extend(Path(d) for d in system_dirs)
    return dirs


def locate(
    name: str,
    data_dir: Path | None,
    download: bool,
    probe: Callable[[Path], F | None],
    fetch: Callable[[Path], object],
    expected: str,
    system_dirs: Sequence[Path] = (),
) -> F:
    """Find a dataset's files with ``probe(dir)`` over :func:`candidate_dirs`; if none has them and
    ``download`` is set, ``fetch(target)`` into the first candidate and probe it again."""
    dirs = candidate_dirs(name, data_dir, system_dirs)
    for d in dirs:
        found = probe(d)
        if found is not None:
            return found
    if download:
        target = dirs[0]
        fetch(target)
        found = probe(target)
        if found is None:
            raise DataError(f"the {name} download into {target} did not produce {expected}.")
        return found
    looked = ", ".join(str(d) for d in dirs)
    raise DataError(
        f"no {name} data found: looked for {expected} in {looked}; pass data_dir (--data-dir), "
        f"set {ENV_VAR}=<dir> to use <dir>/{name}, or allow download=True (--download)."
    )
