"""What a demo generator may touch in a landing zone: the files it wrote, nothing else.

A user trying the demo may drop their own exports beside it. A generator runs inside
`DemoFiles`: it refuses to replace a sources.yaml it did not write, removes only the files its
previous run listed in `landing/.demo-files.json` (fewer batches, another seed), and lists
what it wrote this time.

Every demo site's generator has the same shape (`DemoGenerator`, sized by a `DemoSize`), so
a caller can pick a site at run time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

MANIFEST = ".demo-files.json"


@dataclass(frozen=True)
class DemoSize:
    """How much a demo generator simulates; each site's subclass sets its own defaults.

    `batches` (the newest still running), `seconds_per_sample` (the instruments' scan interval
    before archive compression) and `seed` (the same seed writes the same bytes).
    """

    batches: int
    seconds_per_sample: float
    seed: int


class DemoGenerator(Protocol):
    """A demo site's `generate`: write the site under `root` and return its truth."""

    def __call__(
        self, root: Path, size: DemoSize, progress: Callable[[str], None] = ...
    ) -> dict: ...


class DemoFiles:
    """Context manager around one generation of a demo site's landing zone."""

    def __init__(self, root: Path, header: str) -> None:
        self.landing = Path(root) / "landing"
        self.header = header  # the first line of the sources.yaml this demo writes
        self.manifest = self.landing / MANIFEST
        self.before: dict[str, tuple[int, int, int]] = {}

    def __enter__(self) -> DemoFiles:
        site_file = self.landing / "sources.yaml"
        if site_file.exists() and not site_file.read_text(encoding="utf-8").startswith(self.header):
            raise FileExistsError(
                f"{site_file} exists and was not written by this demo; "
                "the demo never replaces a file it did not write"
            )
        previous = json.loads(self.manifest.read_text()) if self.manifest.exists() else []
        for rel in previous:
            if ".." not in Path(rel).parts:
                (self.landing / rel).unlink(missing_ok=True)
        self.landing.mkdir(parents=True, exist_ok=True)
        self.before = self._files()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            return
        # what is new or was rewritten: a file the user left there keeps its stat and stays
        # off the list
        written = [rel for rel, stamp in self._files().items() if self.before.get(rel) != stamp]
        self.manifest.write_text(json.dumps(sorted(written), indent=0) + "\n")

    def _files(self) -> dict[str, tuple[int, int, int]]:
        out = {}
        for p in self.landing.rglob("*"):
            if p.is_file() and p != self.manifest:
                st = p.stat()
                out[p.relative_to(self.landing).as_posix()] = (
                    st.st_mtime_ns,
                    st.st_size,
                    st.st_ino,
                )
        return out
