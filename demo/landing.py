"""What a demo generator may touch in a landing zone: the files it wrote, nothing else.

A user trying the demo may drop their own exports beside it. A generator runs inside
`DemoFiles`: it refuses to replace a sources.yaml it did not write, removes only the files its
previous run listed in `landing/.demo-files.json` (fewer batches, another seed), and lists
what it wrote this time.
"""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST = ".demo-files.json"


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
        # what is new or was rewritten: a file the user left there keeps its stat and stays off the list
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
