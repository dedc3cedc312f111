"""Where everything lives under the lake root (DESIGN §4), and how files are written.

Writes go to a temporary name in the same folder and are renamed into place, so a reader
(or a crash) never sees half a file. Raw copies are write-once: a file is named by its
SHA-256 and never rewritten.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# Files being written end in ".partial" until renamed into place: DuckDB's globs match hidden
# files too, so a temporary name ending in ".parquet" would be read by the catalog's views.
PARTIAL = ".partial"
# No writer keeps a temporary file this long: older ones were left by a killed writer.
STALE_TEMPORARY_S = 6 * 3600.0


@dataclass(frozen=True)
class Lake:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.duckdb"

    def raw(self, sha256: str, suffix: str) -> Path:
        # the suffix comes from a landing file's name: keep it only if it looks like an extension
        # ('.csv', '.csv.gz'), so no name from outside can make the path long, odd or hidden
        if not _SUFFIX.fullmatch(suffix):
            suffix = ".bin"
        return self._inside(self.root / "raw" / f"{sha256}{suffix}")

    def silver(self, table: str) -> Path:
        return self.root / "silver" / table

    def gold(self, table: str) -> Path:
        return self.root / "gold" / table

    def models(self, table: str) -> Path:
        return self.root / "models" / table

    def state(self, name: str) -> Path:
        return self._inside(self.root / "state" / name)

    def ingested_marker(self, dataset: str, sha256: str) -> Path:
        return self._inside(self.root / "state" / "ingested" / dataset / sha256)

    def _inside(self, path: Path) -> Path:
        """`path` if it stays under the lake root; ValueError otherwise.

        Parts of these paths can come from configuration or data (a profile name, a dataset, a
        file suffix): an absolute part, '..' or NUL must never lead a write out of the lake.
        The check is lexical (no symlinks followed), so a lake folder may be a symlink.
        """
        text = str(path)
        normal = os.path.normpath(text)
        if (
            "\x00" in text
            or normal != text.rstrip("/")
            or not Path(normal).is_relative_to(self.root)
        ):
            raise ValueError(f"refusing a lake path outside {self.root}: {text[:200]!r}")
        return path


_SUFFIX = re.compile(r"(\.[A-Za-z0-9]{1,10}){1,2}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` all or nothing: a synced temporary file in the same folder, then
    renamed over it, so readers and a crash never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=PARTIAL)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    """Write `table` as zstd Parquet to `path` all or nothing (temporary file in the same folder,
    then renamed), so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=PARTIAL)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_write_once(src: Path, dst: Path) -> bool:
    """Copy `src` to `dst` unless `dst` exists; True when a copy was made."""
    if dst.exists():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".tmp-")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def safe_name(key: str) -> str:
    """A file name for a key from the data (batch id, tag): never a path, never hidden.

    Percent-encoding keeps names readable and reversible while `/`, `..`, NUL and the like
    cannot escape the folder; very long keys are cut and suffixed with a hash.
    """
    import hashlib
    from urllib.parse import quote

    # '~' is encoded too (quote() keeps it) so that it only ever marks a shortened name: otherwise
    # an id spelled like another id's shortened name would share its file, and one batch would
    # overwrite another
    name = quote(key, safe="-_.,=+@ ").replace(" ", "%20").replace("~", "%7E")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > 150:
        name = (
            name[:100] + "~" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        )
    # the empty key: '%' alone is never an encoding of anything ('\x00' is '%00')
    return name or "%"


def sweep_stale_temporaries(root: Path, older_than_s: float = STALE_TEMPORARY_S) -> list[Path]:
    """Remove the temporary files and folders (".tmp-*.partial", ".catalog.duckdb.<pid>.tmp")
    that writers killed mid-write left under `root`, if untouched for `older_than_s`; return them.

    They never became part of the lake (no view reads them), so removing them alters nothing;
    a writer still running keeps its file fresh, so the age test keeps its work safe.
    """
    now = time.time()
    stale = [
        p
        for pattern in (f".tmp-*{PARTIAL}", ".catalog.duckdb.*.tmp")
        for p in Path(root).rglob(pattern)
    ]
    removed = []
    for path in sorted(stale):
        try:
            if (
                any(parent in removed for parent in path.parents)
                or now - _last_touched(path) < older_than_s
            ):
                continue
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except FileNotFoundError:  # another sweep got there first
            continue
        removed.append(path)
    return removed


def _last_touched(path: Path) -> float:
    if path.is_dir() and not path.is_symlink():
        return max([path.lstat().st_mtime] + [p.lstat().st_mtime for p in path.rglob("*")])
    return path.lstat().st_mtime
