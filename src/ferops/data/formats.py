"""Readers for every FER2013 layout people download, into one canonical FerData.

Formats (auto-detected by `detect_source`):
  fer2013  competition `fer2013.csv`: `emotion,pixels,Usage`
  icml     `icml_face_data.csv`: `emotion, Usage, pixels` (leading spaces in the header)
  kaggle   `train.csv` (`emotion,pixels`, maybe `id`/`Usage`) + `test.csv` (`id,pixels`, no labels)
  folders  `train|test/<class>/*.jpg|png` of any size or colour (→ 48x48 grey); `<Usage>_<id>.jpg`
           file names set the usage when present
`.csv.gz` works everywhere. Bad rows either fail with a message naming the file, rows and reason
(`on_bad_rows: fail`), or are returned untouched as `Rejected` for the quarantine file.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import logging
import os
import warnings
import zlib
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from ferops.constants import EMOTIONS, IMG_SIZE, N_PIXELS, UNLABELED
from ferops.data.io import FerData, sha256_file
from ferops.errors import BadRowsError, ConfigError, DataError

log = logging.getLogger("ferops.formats")

FORMATS: tuple[str, ...] = ("fer2013", "icml", "kaggle", "folders")
ON_BAD_ROWS: tuple[str, ...] = ("fail", "quarantine")
USAGES: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
UNLABELED_USAGE = "Unlabeled"
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})
EXPECTED_LAYOUTS = "fer2013.csv, icml_face_data.csv, train.csv+test.csv or train|test/<class>/ image folders"
ARCHIVE_EXTS = (".zip", ".tar", ".tar.gz", ".tgz", ".7z", ".rar")
QUARANTINE_COLUMNS: tuple[str, ...] = ("source", "row", "reason", "raw")

# Class folder names seen in the wild (case-insensitive), plus the label digits.
CLASS_ALIASES: dict[str, int] = {
    **{name.lower(): i for i, name in enumerate(EMOTIONS)}, **{str(i): i for i in range(len(EMOTIONS))},
    "anger": 0, "disgusted": 1, "fearful": 2, "scared": 2, "happiness": 3, "sadness": 4, "surprised": 5,
}
# Split folder names → usage when the file name carries none.
FOLDER_USAGE: dict[str, str] = {"train": "Training", "training": "Training", "val": "PublicTest",
                                "valid": "PublicTest", "validation": "PublicTest", "publictest": "PublicTest", "test": "PrivateTest",
                                "testing": "PrivateTest", "privatetest": "PrivateTest"}
_SENTINEL = -7777  # joins rows in one fast parse; never a valid pixel, so its positions give per-row counts
_CHUNK_ROWS = 2000
_PARSE_THREADS = 4  # at most; never more than the CPU count
T = TypeVar("T")
R = TypeVar("R")
_PROGRESS_ROWS = 5000  # show progress bars above this many rows/files
_FIX = "Fix or delete them, or set `ingest.on_bad_rows: quarantine` in params.yaml to skip them."


@dataclass(frozen=True)
class Rejected:
    """One input row or file that was not accepted, kept untouched for the quarantine file."""

    source: str  # the file (or image folder root) it came from
    row: int  # 1-based data row (header not counted) or file index in a folder
    reason: str
    raw: str  # the original line text, or the image file's path


# --------------------------------------------------------------------------------------------- detection


def detect_source(path: str | Path) -> tuple[str, Path] | None:
    """(format, path to read) for a dataset file/folder, or None when `path` holds no dataset."""
    p = Path(path)
    if not p.exists():
        return None
    if p.is_file():
        return _classify_file(p), p
    for d in (p, *sorted(c for c in p.iterdir() if c.is_dir() and not c.name.startswith("."))):
        for name, fmt in (("fer2013.csv", "fer2013"), ("icml_face_data.csv", "icml"), ("train.csv", "kaggle"),
                          ("test.csv", "kaggle")):
            for f in (d / name, d / f"{name}.gz"):
                if f.is_file():
                    return _chosen(d, ((_classify_file(f) if fmt != "kaggle" else "kaggle"), f))
        if _is_image_root(d):
            return "folders", d
        other = sorted(f for f in d.iterdir() if f.is_file() and _strip_gz(f.name).lower().endswith(".csv"))
        if other:
            return _chosen(d, (_classify_file(other[0]), other[0]))
    expected = f"expected {EXPECTED_LAYOUTS}, in {p}/ or one folder down"
    archives = sorted(f.name for f in p.iterdir() if f.name.lower().endswith(ARCHIVE_EXTS))
    if archives:
        raise DataError(f"{p}: found archive(s) {', '.join(archives)} but no dataset — extract them into {p}/ first "
                        f"({expected}).")
    entries = sorted(c.name for c in p.iterdir() if not c.name.startswith("."))
    if entries:  # real data in a layout not recognised must not quietly become the synthetic demo set
        more = f" and {len(entries) - 5} more" if len(entries) > 5 else ""
        raise DataError(f"{p}: holds {', '.join(entries[:5])}{more} but no dataset ferops reads ({expected}). Move "
                        "the dataset there (a .tsv: save it as .csv), or empty the folder for the synthetic demo.")
    return None


def linked_folder(path: str | Path, raw_dir: str | Path) -> Path | None:
    """The link to a folder between `raw_dir` and `path` (inclusive), if any. DVC hashes what a linked file holds,
    but not a linked folder's files: data read through one would go stale unnoticed."""
    raw = Path(os.path.abspath(raw_dir))
    for q in (Path(os.path.abspath(path)), *Path(os.path.abspath(path)).parents):
        if q == raw or not q.is_relative_to(raw):
            return None
        if q.is_symlink() and q.is_dir():
            return q
    return None


def _separator_hint(cols: Sequence[str]) -> str:
    """For a header that names `pixels` but not as a comma-separated column: the likely cause, said."""
    joined = ",".join(cols)
    for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
        if sep in joined and "pixels" in joined:
            return f" The header is separated by {name}: ferops reads comma-separated files — save it with commas."
    return ""


def _chosen(d: Path, found: tuple[str, Path]) -> tuple[str, Path]:
    """`found`, after a warning when `d` holds other CSV files too (which one is read should not be a surprise)."""
    pair = {"train.csv", "test.csv"}
    name = _strip_gz(found[1].name).lower()
    others = sorted(f.name for f in d.iterdir() if f.is_file() and f != found[1]
                    and _strip_gz(f.name).lower().endswith(".csv")
                    and not (name in pair and _strip_gz(f.name).lower() in pair))
    if others:
        log.warning("%s holds several CSV files: reading %s, not %s — set ingest.source to the one to read",
                    d, found[1].name, ", ".join(others))
    if _is_image_root(d):
        log.warning("%s holds image folders too: reading %s, not them — set ingest.source to the one to read",
                    d, found[1].name)
    return found


def _strip_gz(name: str) -> str:
    return name[:-3] if name.lower().endswith(".gz") else name


def _classify_file(f: Path) -> str:
    """Format of one CSV file, from its header (and name)."""
    name = _strip_gz(f.name).lower()
    if not name.endswith(".csv"):
        raise DataError(f"{f}: not a CSV file or image folder — point ingest.source at fer2013.csv, "
                        "icml_face_data.csv, train.csv or an image folder.")
    cols = [c.strip().lower() for c in _header(f)]
    if "pixels" not in cols:
        raise DataError(f"{f}: missing column 'pixels' (header: {','.join(cols)}). Expected `emotion,pixels,Usage` "
                        "(fer2013.csv), `emotion, Usage, pixels` (icml_face_data.csv) or `id,pixels` (test.csv)."
                        + _separator_hint(cols))
    if name.startswith("icml") or cols[:3] == ["emotion", "usage", "pixels"]:
        return "icml"
    if name.startswith("fer2013"):
        return "fer2013"  # the competition file: its Usage column is required
    if name in ("train.csv", "test.csv") or "usage" not in cols:
        return "kaggle"
    return "fer2013"


def _header(f: Path) -> list[str]:
    """The first line of a (maybe gzipped) CSV, split on commas."""
    with open(f, "rb") as fh:
        head = fh.read(1 << 16)
    if head[:2] == b"\x1f\x8b":
        try:
            head = zlib.decompressobj(wbits=47).decompress(head, 1 << 16)
        except zlib.error as exc:
            raise DataError(f"{f}: not a readable gzip file ({exc}) — re-download or decompress it.") from None
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")  # blank lines above the header are not a header
    # split at \r too: a file saved with classic Mac line endings (Excel's "CSV (Macintosh)") has no \n at all
    line = head.split(b"\n", 1)[0].split(b"\r", 1)[0].decode("utf-8", "replace").strip()
    if not line:
        raise DataError(f"{f}: empty file (no header, no rows) — re-download it.")
    return _fields(line) or []


def _fields(line: str) -> list[str] | None:
    """One CSV line's fields, or None where the csv module refuses it (a carriage return inside an unquoted field)."""
    try:
        return next(csv.reader([line]), [])
    except csv.Error:
        return None


def _is_image_root(d: Path) -> bool:
    """True when d holds split folders (train/test/...) or class folders with images."""
    subs = [c for c in d.iterdir() if c.is_dir()]
    split_dirs = [c for c in subs if c.name.lower() in FOLDER_USAGE]
    class_dirs = [c for c in subs if c.name.lower() in CLASS_ALIASES]
    return any(_has_images(c) for c in split_dirs + class_dirs)


def _has_images(d: Path) -> bool:
    readable = image_suffixes()  # the reader's own list: a folder of GIFs only is a dataset too, where they read
    return any(f.suffix.lower() in readable for f in d.rglob("*") if f.is_file())


# --------------------------------------------------------------------------------------------- dispatch


def check_on_bad_rows(on_bad_rows: str) -> str:
    """`on_bad_rows` if it is one of ON_BAD_ROWS, else ConfigError naming the params.yaml key and the choices."""
    if on_bad_rows not in ON_BAD_ROWS:
        raise ConfigError(f"params.yaml ingest.on_bad_rows: {on_bad_rows!r} is not one of {', '.join(ON_BAD_ROWS)}.")
    return on_bad_rows


def read_any(path: str | Path, on_bad_rows: str = "fail", fmt: str | None = None) -> tuple[FerData, list[Rejected]]:
    """Read any supported dataset file/folder; bad rows fail (default) or come back as Rejected."""
    check_on_bad_rows(on_bad_rows)
    p = Path(path)
    if fmt is None:
        found = detect_source(p)
        if found is None:
            raise DataError(f"{p}: no dataset found (expected {EXPECTED_LAYOUTS}).")
        fmt, p = found
    if fmt == "folders":
        return read_image_folders(p, on_bad_rows)
    if fmt == "kaggle":
        return read_kaggle(p, on_bad_rows)
    if fmt in ("fer2013", "icml"):
        return read_csv(p, on_bad_rows, require=("emotion", "usage"))
    raise ConfigError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}.")


def read_kaggle(path: str | Path, on_bad_rows: str = "fail") -> tuple[FerData, list[Rejected]]:
    """Kaggle `train.csv` (+ sibling `test.csv`, unlabeled rows → emotion −1, usage Unlabeled)."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    files = kaggle_files(p, warn=True)
    if not files:
        raise DataError(f"{folder}: no train.csv or test.csv found.")
    parts, rejected, labeled_test = [], [], False
    for f in files:
        is_test = _strip_gz(f.name).lower() == "test.csv"
        # No Usage column: train rows are "Unknown" (the split stage then splits them by class), labeled test rows
        # PrivateTest.
        data, rej = read_csv(f, on_bad_rows, default_usage="PrivateTest" if is_test else "Unknown",
                             require=() if is_test else ("emotion",))
        labeled_test |= is_test and bool((data.emotion != UNLABELED).any())
        if is_test and rej and not labeled_test:  # `quarantine` mode: these rows go on without a prediction
            log.warning("%s: %d row(s) to predict quarantined (row %s, numbered from 1, header not counted): the "
                        "submission file will lack their ids, and Kaggle scores only a submission with every id — "
                        "fix them (the quarantine file holds each, untouched) and re-run", f, len(rej),
                        ", ".join(str(r.row) for r in rej[:10]) + (" …" if len(rej) > 10 else ""))
        parts.append(data)
        rejected += rej
    if labeled_test:  # a labeled test.csv is the test set: train.csv is then train (val carved from it), not a pool
        parts = [FerData(d.pixels, d.emotion, np.where(d.usage == "Unknown", "Training", d.usage), d.source_id)
                 for d in parts]
    return FerData.concat(parts), rejected


def kaggle_files(path: str | Path, warn: bool = False) -> list[Path]:
    """The Kaggle files read for `path`: train.csv and test.csv beside it, each once (`path` itself when it is one
    of them, else the plain file before its .gz), or just `path` when it is another CSV. Both `train.csv` and
    `train.csv.gz` (left by `gzip -k`) hold the same rows: reading both would silently double them."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    files: list[Path] = []
    for name in ("train.csv", "test.csv"):
        both = [f for f in (folder / name, folder / f"{name}.gz") if f.is_file()]
        if both:
            files.append(p if p in both else both[0])
        if warn and len(both) > 1:
            log.warning("%s holds both %s and %s: reading %s only — delete the other one", folder, both[0].name,
                        both[1].name, files[-1].name)
    return [p] if p.is_file() and p not in files else files


# --------------------------------------------------------------------------------------------- CSV


def read_csv(path: str | Path, on_bad_rows: str = "fail", default_usage: str = "Training",
             require: Sequence[str] = ("emotion",)) -> tuple[FerData, list[Rejected]]:
    """One pixels CSV (fer2013 / icml / kaggle train or test) → FerData + rejected rows.

    Columns are matched by stripped, case-insensitive name; `pixels` and the `require`d columns must
    exist. Without `emotion` (or, when `emotion` is not required, an empty label) a row is unlabeled
    (−1, usage Unlabeled); `Usage` defaults to `default_usage`; an `id` column names rows.
    """
    p = Path(path)
    table = _read_table(p)
    cols = [c.strip().lower() for c in table.header]
    missing = [c for c in ("pixels", *require) if c not in cols]
    if missing:
        raise DataError(f"{p}: missing column(s) {', '.join(repr(m) for m in missing)} (header: {','.join(table.header)}). "
                        "Expected `emotion,pixels,Usage` (fer2013.csv) or `emotion, Usage, pixels` (icml_face_data.csv)."
                        + _separator_hint(cols)
                        + (" Rows without labels (only to predict) are read from a file named test.csv."
                           if missing == ["emotion"] else "")
                        + (" A file without a Usage column is read as Kaggle's train.csv (its rows then split by "
                           "class): rename it to train.csv." if missing == ["usage"] else ""))
    n, ncol = len(table.line_no), len(cols)
    if n == 0:
        raise DataError(f"{p}: no data rows below the header — the file is empty or was cut short; re-download it.")
    # A last line without its newline that is too short is the classic sign of a cut-off download.
    cut = " — the line is cut short (truncated file?)" if not table.complete else ""
    reasons: dict[int, str] = {}
    for i in np.flatnonzero(table.nfields != ncol).tolist():
        k = int(table.nfields[i])
        reasons[i] = (f"expected {ncol} fields, found {k}" + (cut if i == n - 1 and k < ncol else "") if k >= 0
                      else "a carriage return (\\r) inside an unquoted field — save the file with one kind of line ending")

    pixels, pix_bad = parse_pixel_strings(table.column(cols.index("pixels"), views=True), desc=f"parse {p.name}")
    for i, why in pix_bad.items():
        if i not in reasons:
            reasons[i] = why + (cut if i == n - 1 and why.startswith("expected") else "")
    emotion = np.full(n, UNLABELED, np.int8)
    if "emotion" in cols:
        for i, s in enumerate(table.column(cols.index("emotion"))):
            if i in reasons:
                continue
            lab, why = _parse_label(s)
            if why and not (not s.strip() and "emotion" not in require):  # test files may leave labels empty
                reasons[i] = why
            else:
                emotion[i] = lab
    if "usage" in cols:
        # `training`, `PUBLICTEST`: the same usage, as column names are; `train`/`val`/`test` as the split folders say
        canonical = {**FOLDER_USAGE, **{u.lower(): u for u in USAGES}}
        usage = np.array([canonical.get(s.strip().lower(), s.strip()) for s in table.column(cols.index("usage"))],
                         dtype=object)
        for i in np.flatnonzero(~np.isin(usage, USAGES)).tolist():
            reasons.setdefault(i, f"Usage {usage[i]!r} is not one of {', '.join(USAGES)}")
    else:
        usage = np.full(n, default_usage, dtype=object)
    usage[emotion == UNLABELED] = UNLABELED_USAGE
    ids = [s.strip() for s in table.column(cols.index("id"))] if "id" in cols else [str(k) for k in table.line_no]
    if "id" in cols:
        _warn_repeated_ids(p, [x for i, x in enumerate(ids) if i not in reasons])
    stem = _strip_gz(p.name)[:-4]
    source_id = np.array([f"{stem}:{x}" for x in ids])

    rejected = [Rejected(str(p), table.line_no[i], reasons[i], table.raw_line(i)) for i in sorted(reasons)]
    _check_bad(p, rejected, n, on_bad_rows)
    if not reasons:  # the usual case: no copy of the 80-MB pixel array
        return FerData(pixels, emotion, usage.astype(str), source_id), rejected
    keep = np.ones(n, bool)
    keep[list(reasons)] = False
    return FerData(pixels[keep], emotion[keep], usage[keep].astype(str), source_id[keep]), rejected


def _warn_repeated_ids(p: Path, ids: list[str]) -> None:
    """Warn when an `id` names several rows: reports and the Kaggle submission (`id,emotion`) name rows by it, and
    there the rows could not be told apart (a submission with a repeated id is refused)."""
    counts = Counter(ids)
    repeated = [x for x, c in counts.items() if c > 1]
    if repeated:
        log.warning("%s: %d id(s) name more than one row (e.g. %s): reports and the submission name rows by id — "
                    "make the `id` column unique", p, len(repeated),
                    ", ".join(f"{x!r} ×{counts[x]}" for x in repeated[:5]))


@dataclass
class _Table:
    """A CSV split into fields without copying the big pixel field (bytes views into the raw file)."""

    header: list[str]
    line_no: list[int]  # 1-based data row number of each kept line (blank lines skipped)
    nfields: np.ndarray  # fields found on each line (rows with the wrong count get empty fields)
    raw: bytes | list[str]  # the whole file's bytes (fast path) or its raw lines (quoted-CSV path)
    starts: np.ndarray
    ends: np.ndarray
    bounds: list[tuple[np.ndarray, np.ndarray]]  # per column: (start, end) byte offsets, fast path only
    rows: list[list[str]] | None = None  # quoted-CSV path: fields per line
    complete: bool = True  # the file ends with a newline

    def column(self, k: int, views: bool = False) -> list:
        """Field k of every line as str, or (fast path, views=True) as zero-copy memoryviews of the raw bytes."""
        if self.rows is not None:
            return [r[k] if len(r) > k else "" for r in self.rows]
        a, b = self.bounds[k]
        if views:  # the big pixel field: no per-row copies; parse_pixel_strings joins them in one pass
            mv = memoryview(self.raw)  # type: ignore[arg-type]
            return [mv[x:y] for x, y in zip(a.tolist(), b.tolist())]
        raw = self.raw
        return [raw[x:y].decode("utf-8", "replace") for x, y in zip(a.tolist(), b.tolist())]  # type: ignore[union-attr]

    def raw_line(self, i: int) -> str:
        """The original text of line i (untouched, without its line ending). Bytes that are not UTF-8 are kept as
        surrogate escapes, so `write_quarantine` writes them back byte for byte."""
        if self.rows is not None:
            return self.raw[i]  # type: ignore[return-value]
        return self.raw[int(self.starts[i]):int(self.ends[i])].decode("utf-8", "surrogateescape")  # type: ignore[union-attr]


def _read_table(p: Path) -> _Table:
    """Split a CSV into header + per-line fields: bytes.find/count find the lines and commas (fast), csv handles
    quoted files."""
    raw = _read_bytes(p)
    if raw[:3] == b"\xef\xbb\xbf":
        raw = raw[3:]
    raw = raw.lstrip(b" \t\r\n")  # blank lines above the header (the same bytes object when there are none)
    if not raw:
        raise DataError(f"{p}: empty file (no header, no rows) — re-download it.")
    if b"\n" not in raw and b"\r" in raw:  # classic Mac line endings (Excel's "CSV (Macintosh)"): one copy, rare
        raw = raw.replace(b"\r", b"\n")
    h = raw.find(b"\n")
    h = len(raw) if h < 0 else h
    header = _fields(raw[:h].decode("utf-8", "replace").rstrip("\r"))
    if header is None:
        raise DataError(f"{p}: the header line holds a stray carriage return (\\r) — save the file with one kind "
                        "of line ending (LF or CRLF).")
    if b'"' in raw:  # quoted fields: let the csv module unquote them (slower, rare)
        body = raw[h + 1:].replace(b"\r\n", b"\n")
        # fields parse from the readable text; the raw lines keep non-UTF-8 bytes for the quarantine file (the
        # two decodings split into the same lines: a newline byte is never part of a multi-byte sequence)
        text, lines = (body.decode("utf-8", err).split("\n") for err in ("replace", "surrogateescape"))
        kept = [k for k, ln in enumerate(text) if ln and not ln.isspace()]
        rows = [_fields(text[k]) for k in kept]  # None (a stray \r): the row is rejected, nfields −1, not a crash
        return _Table(header, [k + 1 for k in kept], np.array([-1 if r is None else len(r) for r in rows], int),
                      [lines[k] for k in kept],
                      np.empty(0, int), np.empty(0, int), [], [r or [] for r in rows], raw.endswith(b"\n"))
    # A loop over lines with bytes.find/count (memchr): ~0.1 s on the 300-MB FER2013 CSV, where numpy's `buf == 10`
    # and flatnonzero over the whole file took ~1 s, mostly faulting in 300-MB temporaries. Pixel rows are long
    # (>= 4.6 KB each), so the per-line interpreter cost stays small beside the scan itself.
    ncol, n, cr = len(header), len(raw), b"\r" in raw
    find, count = raw.find, raw.count
    starts: list[int] = []
    ends: list[int] = []
    line_no: list[int] = []
    nfields: list[int] = []
    cuts: list[list[int]] = [[] for _ in range(ncol - 1)]  # the comma between fields j and j+1 of each line
    pos, k = h + 1, 0
    while pos < n:
        e = find(b"\n", pos)
        e = n if e < 0 else e
        k += 1
        end = e - 1 if cr and e > pos and raw[e - 1] == 13 else e
        # blank lines (e.g. the end of the file), spaces-only too (as the quoted path), are not rows
        if end > pos and not (raw[pos] in b" \t" and raw[pos:end].isspace()):
            c = count(b",", pos, end)
            starts.append(pos)
            ends.append(end)
            line_no.append(k)
            nfields.append(c + 1)
            if c == ncol - 1:
                q = pos - 1
                for cj in cuts:
                    q = find(b",", q + 1, end)
                    cj.append(q)
            else:  # the wrong field count: a placeholder, its fields are made empty below
                for cj in cuts:
                    cj.append(pos)
        pos = e + 1
    st, en = np.array(starts, np.int64), np.array(ends, np.int64)
    good = np.array(nfields, np.int64) == ncol
    cut = [np.array(c, np.int64) for c in cuts]
    bounds = []
    for j in range(ncol):
        a = st if j == 0 else cut[j - 1] + 1
        b = en if j == ncol - 1 else cut[j]
        bounds.append((np.where(good, a, st), np.where(good, b, st)))
    return _Table(header, line_no, np.array(nfields, np.int64), raw, st, en, bounds, None, raw.endswith(b"\n"))


def _inflate():  # noqa: ANN202 - a zlib-compatible module
    """ISA-L's zlib-compatible inflate when installed (a dependency; 0.39 s against zlib's 1.2 s for FER2013's 300 MB
    on a 2-core Xeon), else the standard library's zlib — same API, same output."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib
    return isal_zlib


def _read_bytes(p: Path) -> bytes:
    """Whole file as bytes, gunzipped when compressed (concatenated gzip members too)."""
    data = p.read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    # One decompress call per member: decompressing in blocks and joining them cost ~0.3 s more on FER2013's
    # 300 MB (a second 300-MB buffer to fault in).
    z = _inflate()
    parts: list[bytes] = []
    try:
        while data:
            dec = z.decompressobj(wbits=47)
            parts.append(dec.decompress(data))
            if not dec.eof:
                raise DataError(f"{p}: the compressed file ends early (truncated download?) — re-download it.")
            data = dec.unused_data
    except z.error as exc:
        raise DataError(f"{p}: corrupt gzip data ({exc}) — re-download the file.") from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _parse_label(s: str) -> tuple[int, str]:
    """(label, "") for an integer 0..6 (also "3.0") or a class name (`Happy`, any case, as the image folders take),
    else (−1, reason)."""
    t = s.strip()
    if len(t) == 1 and "0" <= t <= "6":
        return int(t), ""
    if not t:
        return UNLABELED, "missing emotion label"
    try:
        v = float(t)
    except ValueError:
        named = CLASS_ALIASES.get(t.lower())
        if named is not None:
            return named, ""
        return UNLABELED, f"emotion label {t[:20]!r} is not an integer 0..6 nor a class name ({', '.join(EMOTIONS)})"
    if not v.is_integer():
        return UNLABELED, f"emotion label {t[:20]!r} is not an integer 0..6"
    if not 0 <= v < len(EMOTIONS):
        return UNLABELED, f"emotion label {int(v)} outside 0..6"
    return int(v), ""


def parse_pixel_strings(strings: Sequence[str | bytes | memoryview],
                        desc: str = "parse pixels") -> tuple[np.ndarray, dict[int, str]]:
    """Space-separated pixel strings → uint8[N,48,48] + {row index: reason} for rows not 2304 values in 0..255.

    Fast path: a chunk of rows joined by a sentinel value is parsed by one C call (np.fromstring);
    sentinel positions give per-row counts, and a chunk with anything odd is re-checked row by row.
    """
    from tqdm import tqdm

    n = len(strings)
    out = np.zeros((n, IMG_SIZE, IMG_SIZE), np.uint8)
    flat = out.reshape(n, N_PIXELS)
    bad: dict[int, str] = {}
    sep: str | bytes = f" {_SENTINEL} "
    if n and not isinstance(strings[0], str):
        sep = f" {_SENTINEL} ".encode()  # not `sep.encode()`: mypy keeps the declared str | bytes here
    chunks = [(lo, min(lo + _CHUNK_ROWS, n)) for lo in range(0, n, _CHUNK_ROWS)]

    def parse(chunk: tuple[int, int]) -> np.ndarray | None:
        """Parse rows lo..hi into `flat` (disjoint rows, so safe from several threads); the indices of rows that
        are not 2304 values in 0..255 or look odd, or None when the C parse stopped early (non-numeric text)."""
        lo, hi = chunk
        # every row is str or every row bytes-like (one column), and sep matches strings[0]: mypy cannot pair them
        vals = _fromstring(sep.join(strings[lo:hi]) + sep)  # type: ignore[arg-type, operator]
        if vals is None:
            return None
        ends = np.flatnonzero(vals == _SENTINEL)
        if len(ends) != hi - lo or ends[-1] != len(vals) - 1:
            return None
        starts = np.r_[0, ends[:-1] + 1]
        good = (ends - starts) == N_PIXELS
        idx = np.flatnonzero(good)
        every_row = len(idx) == hi - lo
        if every_row:  # every row has 2304 values: a zero-copy view, sentinel column dropped
            block = vals.reshape(hi - lo, N_PIXELS + 1)[:, :N_PIXELS]
        else:
            block = vals[starts[idx, None] + np.arange(N_PIXELS)]
        in_range = (block.view(np.uint32) <= 255).all(axis=1)  # negatives wrap to huge values
        # NumPy reads a C long and casts to int32, so 4294967297 (2**32 + 1) came in as pixel 1. A value that wraps
        # has ≥ 10 digits: a row whose text is longer than its parsed pixels' digits + single spaces is re-checked
        # alone (extra spaces or leading zeros, valid, land there too; clean files never do).
        text_len = np.fromiter(map(len, strings[lo:hi]), np.int64, hi - lo)[idx]
        in_range &= text_len == _digits(block).sum(axis=1) + N_PIXELS - 1
        if every_row and in_range.all():
            flat[lo:hi] = block
        else:
            flat[lo + idx[in_range]] = block[in_range]
        return lo + np.r_[np.flatnonzero(~good), idx[~in_range]]

    # np.fromstring and these array operations release the GIL, so chunks parse on every core (x1.9 on 2 cores)
    workers = min(len(chunks), _PARSE_THREADS, os.cpu_count() or 1)
    with _strict_fromstring(), ThreadPoolExecutor(workers) if workers > 1 else nullcontext() as pool, \
            tqdm(total=n, unit="row", desc=desc, disable=n < _PROGRESS_ROWS, leave=False) as bar:
        # one chunk (a REST request, a small CSV): parsed inline, no thread started
        results = _in_order(pool, parse, chunks, ahead=2 * workers) if pool else map(parse, chunks)
        for (lo, hi), bad_rows in zip(chunks, results):
            # None: the C parse stopped early (non-numeric text), so check each row; else the rows it found bad,
            # or only odd (see `parse`): the exact check decides
            for i in range(lo, hi) if bad_rows is None else bad_rows.tolist():
                row, why = _parse_one(_text(strings[i]))
                if why:
                    bad[i] = why
                else:
                    assert row is not None  # _parse_one gives a row exactly when it gives no reason
                    flat[i] = row
            bar.update(hi - lo)
    return out, bad


def _in_order(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Sequence[T], ahead: int) -> Iterator[R]:
    """fn over items on the pool, yielded in order, at most `ahead` submitted before their turn (bounded memory)."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@contextmanager
def _strict_fromstring() -> Iterator[None]:
    """Older NumPy only warns on text np.fromstring cannot read to its end: make that an error. Set once around the
    threaded parse (the warnings filter is process-wide; entering it per call from several threads is not safe)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        yield


def _text(s: str | bytes | memoryview) -> str:
    return s if isinstance(s, str) else bytes(s).decode("utf-8", "replace")


def _fromstring(s: str | bytes, dtype: type = np.int32) -> np.ndarray | None:
    """np.fromstring of whitespace-separated ints, or None when it cannot read to the end (inside
    `_strict_fromstring`, also on older NumPy)."""
    try:
        return np.fromstring(s, sep=" ", dtype=dtype)
    except (ValueError, DeprecationWarning):
        return None


def _digits(block: np.ndarray) -> np.ndarray:
    """The decimal digits of each value in 0..255 (1, 2 or 3)."""
    return 1 + (block > 9).view(np.int8) + (block > 99).view(np.int8)


def _parse_one(s: str) -> tuple[np.ndarray | None, str]:
    """One pixel string → (2304 uint8 values, "") or (None, reason); int64, so no value wraps into 0..255."""
    vals = _fromstring(s, np.int64)
    if vals is not None and len(vals) == N_PIXELS and vals.min() >= 0 and vals.max() <= 255:
        return vals.astype(np.uint8), ""
    return None, _pixel_problem(s)


def _pixel_problem(s: str) -> str:
    """The first thing wrong with a pixel string, in words."""
    toks = s.split()
    if len(toks) != N_PIXELS:
        commas = s.count(",") + 1 if "," in s else 0
        hint = " (separated by commas: pixel values are separated by spaces)" if commas >= N_PIXELS // 2 else ""
        return f"expected {N_PIXELS} pixel values, found {len(toks)}{hint}"
    for k, t in enumerate(toks, start=1):
        try:
            v = int(t)
        except ValueError:
            try:
                float(t)
            except ValueError:
                return f"non-numeric pixel value {t[:20]!r} at position {k}"
            return (f"pixel value {t[:20]!r} at position {k} is not a whole number (grey levels 0..255; values "
                    "scaled to 0..1 need multiplying by 255 and rounding)")
        if not 0 <= v <= 255:
            return f"pixel value {v} at position {k} outside 0..255"
    return "unparsable pixel values"


def _check_bad(source: Path, rejected: list[Rejected], total: int, on_bad_rows: str, unit: str = "row") -> None:
    """In `fail` mode, raise one BadRowsError listing the first bad rows, the count, the reasons and the fix (it
    carries them all, for the quarantine file)."""
    if not rejected or on_bad_rows == "quarantine":
        if rejected:
            log.warning("%s: %d of %d %ss rejected (quarantined)", source, len(rejected), total, unit)
        return
    shown = "; ".join(f"{unit} {r.row}{' (' + os.path.relpath(r.raw, source) + ')' if unit == 'file' else ''}: {r.reason}"
                      for r in rejected[:5])
    more = f" … and {len(rejected) - 5} more" if len(rejected) > 5 else ""
    raise BadRowsError(f"{source}: {len(rejected)} bad {unit}(s) of {total} ({unit}s numbered from 1"
                       f"{', header not counted' if unit == 'row' else ''}) — {shown}{more}. {_FIX}", rejected)


# --------------------------------------------------------------------------------------------- images


def read_image_folders(root: str | Path, on_bad_rows: str = "fail") -> tuple[FerData, list[Rejected]]:
    """`train|test/<class>/*.jpg|png` (any size/colour) → 48x48 grey FerData + rejected files.

    Usage comes from the split folder (train → Training, val → PublicTest, test → PrivateTest). Two cases read a
    `<Usage>_<id>` file-name prefix: in a `test/` folder with no `val/` beside it, `PublicTest_` files are val (Kaggle's
    image release keeps both halves of FER2013's test set in test/, named so); with no split folders at all, the
    prefix is all there is. A prefix that disagrees with its folder otherwise is named in a warning: the folder wins.
    Images directly inside a split folder are unlabeled. A linked folder inside `root` is an error: DVC does not
    look through links to folders, so its images could change without re-running ingest.
    """
    import cv2
    from tqdm import tqdm

    root = Path(root)
    items, skipped = _image_files(root)
    links = [p for p, why in skipped if why == _LINKED_FOLDER]
    if links:
        shown = ", ".join(p.relative_to(root).as_posix() for p in links[:5]) + (" …" if len(links) > 5 else "")
        raise DataError(f"{root}: {len(links)} linked folder(s) ({shown}): DVC does not look through a link to a "
                        "folder, so a change to its images would not re-run ingest (and a class of a split could go "
                        "missing unnoticed) — copy the folder in (`cp -rL`), or point `ingest.raw_dir` at a real "
                        "folder that holds the whole dataset.")
    if skipped:
        shown = "; ".join(f"{p.relative_to(root).as_posix()} ({why})" for p, why in skipped[:5])
        log.warning("%s: %d file(s) or folder(s) not read: %s%s", root, len(skipped), shown,
                    f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
    if not items:
        raise DataError(f"{root}: no images found (expected train|test/<class>/*.jpg|png).")
    n = len(items)
    pixels = np.zeros((n, IMG_SIZE, IMG_SIZE), np.uint8)
    emotion = np.full(n, UNLABELED, np.int8)
    usage = np.empty(n, dtype=object)
    source_id = np.empty(n, dtype=object)
    keep = np.zeros(n, bool)
    rejected: list[Rejected] = []
    has_val = any(u == "PublicTest" for _, u, _ in items)
    misnamed: list[str] = []
    for i, (f, split_usage, cls_name) in enumerate(tqdm(items, unit="img", desc=f"read {root.name}",
                                                        disable=n < _PROGRESS_ROWS, leave=False)):
        label = CLASS_ALIASES.get(cls_name.lower()) if cls_name else UNLABELED
        if label is None:
            rejected.append(Rejected(str(root), i + 1, f"unknown class folder {cls_name!r} (expected one of "
                                     f"{', '.join(e.lower() for e in EMOTIONS)})", str(f)))
            continue
        try:
            img = _load_image(f, cv2)
        except OSError as exc:  # no read permission, an I/O error: a bad file like a corrupt one, not a traceback
            rejected.append(Rejected(str(root), i + 1, f"cannot read it ({exc.strerror or exc})", str(f)))
            continue
        if img is None:
            rejected.append(Rejected(str(root), i + 1, "unreadable or corrupt image", str(f)))
            continue
        prefix = f.stem.split("_", 1)[0]
        pixels[i], emotion[i], keep[i] = img, label, True
        usage[i] = _folder_usage(prefix, split_usage, has_val)
        if prefix in USAGES and prefix != usage[i]:
            misnamed.append(f.relative_to(root).as_posix())
        if label == UNLABELED:
            usage[i] = UNLABELED_USAGE
        source_id[i] = f.relative_to(root).as_posix()
    if misnamed:
        log.warning("%s: %d image(s) named for another split than their folder's (e.g. %s): the folder decides",
                    root, len(misnamed), ", ".join(misnamed[:3]))
    _check_bad(root, rejected, n, on_bad_rows, unit="file")
    return FerData(pixels[keep], emotion[keep], usage[keep].astype(str), source_id[keep].astype(str)), rejected


def _folder_usage(prefix: str, split_usage: str | None, has_val: bool) -> str:
    """An image's usage: its split folder's, but FER2013's own PublicTest/PrivateTest name inside test/ when no
    val/ folder says otherwise, and the name (else Training) when there are no split folders (split_usage None)."""
    if split_usage is None:
        return prefix if prefix in USAGES else "Training"
    if split_usage == "PrivateTest" and not has_val and prefix in ("PublicTest", "PrivateTest"):
        return prefix
    return split_usage


_LINKED_FOLDER = "a link to a folder"


def _image_files(root: Path) -> tuple[list[tuple[Path, str | None, str]], list[tuple[Path, str]]]:
    """(file, usage from its split folder (None: no split folders), class folder name or "") for every image, in
    sorted order; and (path, reason) for every entry not read, so that none is dropped unsaid."""
    subs = sorted(c for c in root.iterdir() if c.is_dir() and not c.is_symlink() and not c.name.startswith("."))
    splits = [c for c in subs if c.name.lower() in FOLDER_USAGE]
    # Without split folders, the root holds the class folders directly (all Training).
    tops: list[tuple[Path, str | None]] = [(s, FOLDER_USAGE[s.name.lower()]) for s in splits] or [(root, None)]
    readable = image_suffixes()
    found: list[tuple[int, Path, str | None, str]] = []  # (index of its split folder, file, usage, class): sorted below
    skipped: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):  # links to folders are listed here, never followed
        d = Path(dirpath)
        for name in [n for n in dirnames if not n.startswith(".") and (d / n).is_symlink()]:
            skipped.append((d / name, _LINKED_FOLDER))
        dirnames[:] = [n for n in dirnames if not n.startswith(".") and not (d / n).is_symlink()]
        for name in filenames:
            if name.startswith("."):
                continue
            f = d / name
            top = next((i for i, (t, _) in enumerate(tops) if f.is_relative_to(t)), None)
            if not f.exists():
                skipped.append((f, "a broken link"))
            elif f.suffix.lower() not in readable:
                skipped.append((f, f"not an image type ferops reads ({', '.join(sorted(readable))})"))
            elif top is None:
                skipped.append((f, f"outside the split folders ({', '.join(s.name for s in splits)})"))
            else:
                rel = f.relative_to(tops[top][0]).parts
                found.append((top, f, tops[top][1], rel[0] if len(rel) > 1 else ""))
    found.sort(key=lambda it: it[:2])  # split folders in order, each sorted by path
    return [it[1:] for it in found], sorted(skipped)


# The smallest GIF (1x1): whether this OpenCV decodes GIFs (4.14 does; older builds did not).
_TINY_GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00"
             b"\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


@functools.cache
def opencv_reads_gif() -> bool:
    """True when the installed OpenCV decodes GIF files (their first frame)."""
    import cv2

    return cv2.imdecode(np.frombuffer(_TINY_GIF, np.uint8), cv2.IMREAD_GRAYSCALE) is not None


def image_suffixes(base: Iterable[str] = IMAGE_EXTS) -> frozenset[str]:
    """File suffixes of the images read: `base` (ingest's IMAGE_EXTS by default), and .gif where OpenCV decodes it."""
    return frozenset(base) | ({".gif"} if opencv_reads_gif() else frozenset())


def _load_image(f: Path, cv2) -> np.ndarray | None:  # noqa: ANN001 - cv2 module passed in (lazy import)
    """Any image file → uint8[48,48] grey (centre-cropped to square, then resized), or None if unreadable."""
    buf = np.fromfile(f, np.uint8)  # imdecode(fromfile) also handles non-ASCII paths
    if buf.size == 0:
        return None
    img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    if img is None or img.size == 0:
        return None
    return resize_to_model(img)


def resize_to_model(gray: np.ndarray) -> np.ndarray:
    """A grey image of any size → uint8 48x48: centre-crop to a square (the face keeps its aspect ratio), then
    resize (INTER_AREA when shrinking, INTER_LINEAR when enlarging). The one copy: ingest reads image files with
    it, and `ferops predict` / REST serving prepare photos with it, so serving sees what training saw."""
    import cv2

    h, w = gray.shape[:2]
    if h != w:
        s = min(h, w)
        gray = gray[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    if gray.shape == (IMG_SIZE, IMG_SIZE):
        return np.ascontiguousarray(gray, dtype=np.uint8)
    interp = cv2.INTER_AREA if gray.shape[0] > IMG_SIZE else cv2.INTER_LINEAR
    return cv2.resize(gray, (IMG_SIZE, IMG_SIZE), interpolation=interp)


# --------------------------------------------------------------------------------------------- quarantine


def write_quarantine(rejected: Sequence[Rejected], path: str | Path) -> Path:
    """Write every rejected row/file (header only when none) as CSV: source,row,reason,raw."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    # surrogateescape: a raw line's non-UTF-8 bytes go back out as they came in (nothing is lost)
    with open(p, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(QUARANTINE_COLUMNS)
        w.writerows((r.source, r.row, r.reason, r.raw) for r in rejected)
    return p


# --------------------------------------------------------------------------------------------- summaries


def source_sha256(fmt: str, path: str | Path) -> str:
    """sha256 of the raw input: the file, the images of the folder, or (kaggle) train.csv + test.csv together."""
    p = Path(path)
    if fmt == "folders":
        # only the images read: a .DS_Store that Finder drops, or notes beside them, are not data — a hash changed by
        # them would mark the next model as trained on other data, and stop the registry comparing it with the champion
        return sha256_file(p, only=[f for f, _, _ in _image_files(p)[0]])
    if fmt != "kaggle":
        return sha256_file(p)
    files = kaggle_files(p) or [p]
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{sha256_file(f)}\n".encode())
    return h.hexdigest()


def dataset_sha256(data: FerData) -> str:
    """sha256 of a dataset's arrays (pixels, labels, usage, ids): the fingerprint of generated data."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(data.pixels).tobytes())
    h.update(np.asarray(data.emotion, np.int8).tobytes())
    for col in (data.usage, data.source_id):
        h.update("\n".join(map(str, col)).encode())
    return h.hexdigest()


def summarize(data: FerData) -> dict[str, object]:
    """Row counts: labeled/unlabeled, per usage, per class name, per usage × class name."""
    labeled = data.emotion != UNLABELED
    present = set(data.usage.tolist())
    usages = [u for u in USAGES if u in present] + sorted(present - set(USAGES))  # competition order first
    per_usage_class = {u: {name: int(((data.usage == u) & (data.emotion == c)).sum()) for c, name in enumerate(EMOTIONS)}
                       for u in usages if ((data.usage == u) & labeled).any()}
    return {
        "rows": len(data), "labeled": int(labeled.sum()), "unlabeled": int((~labeled).sum()),
        "per_usage": {u: int((data.usage == u).sum()) for u in usages},
        "per_class": {name: int((data.emotion == c).sum()) for c, name in enumerate(EMOTIONS)},
        "per_usage_class": per_usage_class,
    }
