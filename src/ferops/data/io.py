"""The canonical in-memory dataset and its on-disk form (.npz), shared by every stage."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ferops.constants import EMOTIONS, IMG_SIZE, UNLABELED
from ferops.errors import DataError


@dataclass
class FerData:
    """pixels uint8[N,48,48]; emotion int8[N] (−1 = unlabeled); usage str[N]; source_id str[N]."""

    pixels: np.ndarray
    emotion: np.ndarray
    usage: np.ndarray
    source_id: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.pixels)
        if self.pixels.shape[1:] != (IMG_SIZE, IMG_SIZE) or self.pixels.dtype != np.uint8:
            raise ValueError(f"pixels must be uint8[N,{IMG_SIZE},{IMG_SIZE}], got {self.pixels.dtype}{self.pixels.shape}")
        for name in ("emotion", "usage", "source_id"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, pixels has {n}")

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def labeled(self) -> np.ndarray:
        """Boolean mask of rows with a label."""
        return self.emotion != UNLABELED

    def subset(self, mask_or_idx: np.ndarray) -> "FerData":
        """Rows selected by a boolean mask or an index array."""
        return FerData(self.pixels[mask_or_idx], self.emotion[mask_or_idx], self.usage[mask_or_idx], self.source_id[mask_or_idx])

    @staticmethod
    def concat(parts: list["FerData"]) -> "FerData":
        """Rows of several datasets, in order."""
        return FerData(
            np.concatenate([p.pixels for p in parts]).astype(np.uint8),
            np.concatenate([p.emotion for p in parts]).astype(np.int8),
            np.concatenate([p.usage for p in parts]).astype(str),
            np.concatenate([p.source_id for p in parts]).astype(str),
        )


def class_counts(emotion: np.ndarray) -> dict[str, int]:
    """Labeled rows per class name (all classes listed)."""
    return {name: int((emotion == c).sum()) for c, name in enumerate(EMOTIONS)}


def data_digest(*datasets: FerData) -> str:
    """A short digest of the rows, labels and pixels of `datasets`: what a study or a checkpoint was made from, so
    that corrected labels or pixels (same row count) start fresh instead of resuming (~0.1 s for FER2013)."""
    h = hashlib.sha1()
    for d in datasets:
        h.update(np.asarray(d.source_id).astype(str).tobytes())
        h.update(np.asarray(d.emotion, dtype=np.int8).tobytes())
        h.update(np.ascontiguousarray(d.pixels).tobytes())
    return h.hexdigest()[:16]


def save_npz(data: FerData, path: str | Path, **extra: Any) -> Path:
    """Write a dataset (plus optional extra arrays) as an uncompressed .npz (fast to reload)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez(p, pixels=data.pixels, emotion=data.emotion.astype(np.int8),
             usage=data.usage.astype(str), source_id=data.source_id.astype(str), **extra)
    return p


def load_npz(path: str | Path) -> FerData:
    """Read a dataset written by save_npz; a missing file names the stage that makes it."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: not found — run the stage that writes it first (`dvc repro`).")
    try:
        with np.load(p, allow_pickle=False) as z:
            return FerData(z["pixels"], z["emotion"].astype(np.int8), z["usage"].astype(str), z["source_id"].astype(str))
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        # cut short (a stage killed while writing it, a full disk) or not a dataset at all (another .npz/.npy): a
        # message naming the file, not a traceback from inside numpy
        raise DataError(f"{p}: not a readable ferops dataset ({type(exc).__name__}: {exc}) — re-run the stage that "
                        "writes it (`dvc repro --force <stage>`), or point at a dataset file ingest/split/augment wrote."
                        ) from None


def sha256_file(path: str | Path, chunk: int = 1 << 20, only: Iterable[Path] | None = None) -> str:
    """sha256 of a file's bytes (or of every file under a folder, or of the files `only` names there, in sorted
    order, each with its path in the folder)."""
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(only if only is not None else (f for f in p.rglob("*") if f.is_file())) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def write_json(obj: Any, path: str | Path) -> Path:
    """Write JSON (indented, numpy scalars converted) creating parent folders."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2, default=_to_builtin) + "\n")
    return p


def read_json(path: str | Path) -> Any:
    """Read JSON; a missing file names the stage that makes it."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: not found — run the stage that writes it first (`dvc repro`).")
    return json.loads(p.read_text())


def _to_builtin(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
