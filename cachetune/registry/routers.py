"""Routers stored in the registry, beside the adapters they route to.

Layout: ``routers/<name>/<version>.json`` under the registry root, one JSON document per version
(written by ``cachetune.core.routing.router.Router.to_json``; the registry only stores it and reads
its ``domains``); the name defaults to the routed domains joined by ``+`` (``medical+programming``).
Versions count up and are never overwritten; the latest version of the router for a set of
domains is the one served.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from cachetune.core.errors import CachetuneError
from cachetune.core.jsonl import read_json, write_json
from cachetune.registry.index_file import IndexFile
from cachetune.registry.registry import parse_ref

ROUTERS_DIR = "routers"
# A folder name under routers/ that cannot escape it: '+' joins the domains of a default name.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_router_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise CachetuneError(f"bad router name {name!r}: use letters, digits, '.', '_', '-' or '+' (at most 128)")
    return name


def default_name(domains: Sequence[str]) -> str:
    return "+".join(sorted(domains))


class RouterStore:
    """The routers of one registry (``AdapterRegistry``)."""

    def __init__(self, registry):
        self.folder = Path(registry.root) / ROUTERS_DIR
        self._lock = IndexFile(self.folder / "routers.json")  # only its lock is used

    def _versions(self, name: str) -> List[int]:
        folder = self.folder / name
        if not folder.is_dir():
            return []
        return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())

    def names(self) -> List[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if p.is_dir() and self._versions(p.name))

    def save(self, document: dict, name: Optional[str] = None) -> str:
        """Store a router ``document`` as the next version of ``name``; return its ``name@version``."""
        name = check_router_name(name or default_name(document["domains"]))
        with self._lock.locked():
            version = max(self._versions(name), default=0) + 1
            write_json(self.folder / name / f"{version}.json", document)
        return f"{name}@{version}"

    def path_of(self, ref: str) -> Path:
        name, version = parse_ref(ref)
        check_router_name(name)
        versions = self._versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise CachetuneError(f"no router named '{name}' in the registry (routers: {known}); "
                                 f"train one with `cachetune router train`", self.folder)
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise CachetuneError(f"router '{name}' has no version {version} (versions: "
                                 f"{', '.join(map(str, versions))})", self.folder / name)
        return self.folder / name / f"{version}.json"

    def load(self, ref: str) -> Tuple[dict, str, Path]:
        """``(document, name@version, file)`` of ``ref`` (``name`` alone: its latest version)."""
        path = self.path_of(ref)
        return read_router_file(path), f"{parse_ref(ref)[0]}@{path.stem}", path

    def find(self, domains: Optional[Sequence[str]] = None) -> Tuple[dict, str, Path]:
        """The latest router for exactly ``domains``; with None, the only router name there is."""
        names = self.names()
        if domains is None:
            if len(names) != 1:
                raise CachetuneError(
                    "no router in the registry; train one with `cachetune router train`" if not names else
                    f"the registry holds several routers ({', '.join(names)}): name one with --router", self.folder)
            return self.load(names[0])
        for name in names:
            found = self.load(name)
            if sorted(found[0].get("domains") or []) == sorted(domains):
                return found
        raise CachetuneError(f"no router for {', '.join(sorted(domains))} in the registry (routers: "
                             f"{', '.join(names) or 'none'}); train one with `cachetune router train`", self.folder)


def read_router_file(path) -> dict:
    """A router document: a JSON object with a ``domains`` list (the rest is checked when it is used)."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("domains"), list):
        raise CachetuneError("not a router file: expected a JSON object with a 'domains' list", path)
    return data
