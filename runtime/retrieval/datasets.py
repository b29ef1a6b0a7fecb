"""UKBench and INRIA Holidays, in the layouts they are downloaded in, and ``simx eval``.

Why the real layouts: users point ``--root`` at what they unpacked, and the group
of an image follows from its file name alone:
- UKBench: ``ukbench00000.jpg`` ... ``ukbench10199.jpg`` (the archive puts them in
  ``full/``); group = number // 4, four views per object.
- Holidays: ``100000.jpg`` ... (the archive puts them in ``jpg/``); group = number // 100,
  the query is the group's first image (``xxxx00.jpg``).

Evaluation embeds through the feature cache (the same engine as ``simx embed``), so
a second evaluation of the same model on the same folder embeds nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path


from simx.core.errors import SimxError

DATASETS = ("ukbench", "holidays")
_PATTERNS = {
    "ukbench": re.compile(r"^ukbench(\d{5})\.jpe?g$", re.IGNORECASE),
    "holidays": re.compile(r"^(\d{6})\.jpe?g$", re.IGNORECASE),
}
_SUBDIRS = {"ukbench": ("", "full"), "holidays": ("", "jpg")}
_GROUP_SIZE = {"ukbench": 4, "holidays": 100}


class DatasetError(SimxError):
    """A dataset folder without the expected files."""


@dataclass(frozen=True)
class Dataset:
    """Image files of a retrieval set, in id order, with the group of each."""

    name: str
    root: Path
    paths: list[Path]
    ids: list[int]
    groups: list[int]

    @property
    def n_groups(self) -> int:
        return len(set(self.groups))


def load_dataset(name: str, root: str | os.PathLike[str]) -> Dataset:
    """Find a dataset's images under ``root`` (or its ``full/`` / ``jpg/`` sub-folder)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder")
    pat = _PATTERNS[name]
    found: list[tuple[int, Path]] = []
    for sub in _SUBDIRS[name]:
        d = root / sub if sub else root
        if d.is_dir():
            found = sorted((int(m.group(1)), d / f) for f in os.listdir(d)
                           if (m := pat.match(f)) and (d / f).is_file())
            if found:
                break
    if not found:
        example = "ukbench00000.jpg" if name == "ukbench" else "100000.jpg"
        where = " or ".join(str(root / s) if s else str(root) for s in _SUBDIRS[name])
        raise DatasetError(f"no {name} images (named like {example}) in {where}")
    ids = [i for i, _ in found]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DatasetError(f"{name}: image number {dup} appears twice (.jpg and .jpeg?)")
    size = _GROUP_SIZE[name]
    return Dataset(name, root, [p for _, p in found], ids, [i // size for i in ids])


def default_cache_dir(dataset: Dataset, spec_hash: str) -> Path:
    """``$SIMX_CACHE_DIR`` (default ``~/.cache/simx``) / eval-<dataset>-<root hash>-<model hash>.

    Outside the dataset folder, which may be read-only; keyed by both the folder and the
    model so two copies of a dataset or two models never share rows.
    """
    base = Path(os.environ.get("SIMX_CACHE_DIR") or Path.home() / ".cache" / "simx")
    root = hashlib.sha256(str(dataset.root.resolve()).encode()).hexdigest()[:8]
    return base / f"eval-{dataset.name}-{root}-{spec_hash}"
