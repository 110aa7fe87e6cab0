"""What of the host's read-only trees the jail must not see: Python packages.

The jail mounts ``/usr`` (and the caller's ``ro_binds``) read-only for its
programs and the interpreter's standard library. Installed packages live
there too: a system Python's ``dist-packages``, a container image's
``/usr/local/lib/python3.X/site-packages``, a venv under ``/usr/local`` — and
with them Drillyard's own package data (the bundled GAIA answers). Every
such folder is covered with an empty read-only tmpfs inside the jail:

- every ``site-packages`` / ``dist-packages`` folder, and every folder holding
  a distribution's metadata (``*.dist-info``: ``pip install --target``),
  found under a visible tree (a walk at most `DEPTH` folders deep, skipping
  documentation, headers and locales);
- the folders this process imports Drillyard from (a site folder, or the
  checkout holding ``pyproject.toml``), wherever they are.

The walk is done once per process per set of trees (about 0.1 s on a
Debian image), in the caller's thread.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

DEPTH = 6
SITE_NAMES = ("site-packages", "dist-packages")
_DIST_SUFFIXES = (".dist-info", ".egg-info", ".egg-link")
_SKIP = {"doc", "man", "locale", "include", "icons", "node_modules", "__pycache__"}
PROJECT_PACKAGES = ("engine", "tools", "gaia", "backends")


def _site_folders(root: str) -> list[str]:
    """Package folders under ``root``: named like a site folder, or holding an
    installed distribution's metadata (``pip install --target``, vendored libs)."""
    found = []
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError:
            continue
        inner, holds_distributions = [], False
        with entries:
            for entry in entries:
                if entry.name.endswith(_DIST_SUFFIXES):
                    holds_distributions = True
                    break
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                except OSError:
                    continue
                if entry.name in SITE_NAMES:
                    found.append(entry.path)
                elif depth < DEPTH and entry.name not in _SKIP:
                    inner.append((entry.path, depth + 1))
        if holds_distributions and folder != root:
            found.append(folder)
        else:
            stack.extend(inner)
    return found


def _project_folders() -> list[str]:
    """Where this process imports Drillyard's packages from."""
    found = []
    for name in PROJECT_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            package = Path(location).resolve()
            parent = package.parent
            if parent.name in SITE_NAMES or (parent / "pyproject.toml").exists():
                found.append(str(parent))
            else:
                found.append(str(package))
    return found


def _inside(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


@functools.lru_cache(maxsize=8)
def hidden_paths(roots: tuple[str, ...]) -> tuple[str, ...]:
    """The folders to cover in a jail that mounts ``roots`` (real paths) read-only:
    outermost first, none inside another."""
    candidates = {os.path.realpath(p) for root in roots for p in _site_folders(root)}
    candidates |= {os.path.realpath(p) for p in _project_folders()}
    visible = [c for c in candidates if _inside(c, roots) and os.path.isdir(c)]
    kept: list[str] = []
    for path in sorted(visible, key=len):
        if not _inside(path, kept):
            kept.append(path)
    return tuple(kept)


def holds_project(folder: str) -> str | None:
    """Why ``folder`` (offered to the jail as packages) would show Drillyard, or None."""
    try:
        names = os.listdir(folder)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    projects = _project_folders()
    for name in names:
        path = os.path.join(folder, name)
        if name.lower().startswith(("drillyard-", "__editable__.drillyard", "drillyard.")):
            return f"it holds {name}, Drillyard's own install"
        if name == "gaia" and os.path.isdir(os.path.join(path, "data")):
            return f"it holds {path}/data, the bundled GAIA answers"
        if name.endswith((".pth", ".egg-link")):
            try:
                with open(path, errors="replace") as f:
                    text = f.read(65536)
            except OSError:
                continue
            if any(p in text for p in projects):
                return f"{name} points at Drillyard's source"
    return None
