"""The adapter registry: versioned copies of trained adapters, indexed by name and domain.

Layout under the registry root (``--registry DIR``, else ``$CACHETUNE_HOME``, else
``~/.cache/cachetune``)::

    adapters/index.json          every record (see :meth:`AdapterRegistry.add`)
    adapters/index.json.lock     writers' lock
    adapters/<name>/<version>/   the adapter's files, as registered

Adding copies the files into a staging folder first and renames it into place under the
lock, so a version folder is either complete or absent; a staging folder left by a killed
add is removed by the next add (under the lock) and reported by ``verify``. Records keep each
file's sha256; :meth:`AdapterRegistry.check` re-hashes them before anything is loaded.

Every folder the registry reads, copies or deletes is derived from a validated name and
version (never from a path stored in the index) and checked to lie inside the registry.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

from cachetune.core.adapters import PEFT_WEIGHTS, check_finite_weights
from cachetune.core.errors import CachetuneError
from cachetune.core.outputs import REGISTRY_ADAPTERS_DIR, REGISTRY_INDEX_FILE, check_output, check_writable
from cachetune.registry.adapter_files import copy_regular_file, file_problems, hash_files, inspect_adapter
from cachetune.registry.index_file import IndexFile, check_name
from cachetune.registry.staging import folder_bytes, remove_stale, stale_folders, staging_folder

HOME_ENV = "CACHETUNE_HOME"
DEFAULT_HOME = "~/.cache/cachetune"
ADAPTERS_DIR = REGISTRY_ADAPTERS_DIR
INDEX_FILE = REGISTRY_INDEX_FILE
STAGING_DIR = ".staging"

PathLike = Union[str, Path]


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser()


def parse_ref(ref: str) -> Tuple[str, Optional[int]]:
    """``"name"`` -> (name, None); ``"name@3"`` -> (name, 3)."""
    name, sep, version = str(ref).partition("@")
    if not name:
        raise CachetuneError(f"bad adapter reference '{ref}' (expected NAME or NAME@VERSION)")
    if not sep or version in ("", "latest"):
        return name, None
    if not version.isdigit():
        raise CachetuneError(f"bad adapter version in '{ref}' (expected NAME@<integer>)")
    return name, int(version)


def calibrated_threshold(metrics: dict) -> Optional[float]:
    """The evaluation's calibrated cosine threshold, if the metrics carry one.

    Looked up at ``metrics["adapter"]["pairs"]["calibrated_threshold"]``, then at the
    top level (``evaluate --register-metrics`` also puts it there).
    """
    candidates = []
    try:
        candidates.append(metrics["adapter"]["pairs"]["calibrated_threshold"])
    except (KeyError, TypeError):
        pass
    if isinstance(metrics, dict):
        candidates.append(metrics.get("calibrated_threshold"))
    for value in candidates:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class AdapterRegistry:
    """Versioned LoRA adapters on disk.

    Records are plain dicts: ``name``, ``version``, ``ref`` (``name@version``), ``domain``,
    ``path`` (relative folder), ``base_model`` {``id``, ``weights_sha256``}, ``lora``
    {``r``, ``alpha``, ``dropout``, ``target_modules``}, ``files`` {file: sha256},
    ``created`` (training time from the card), ``registered``, ``source``,
    ``domain_plugin`` {``name``, ``package``, ``version``}, ``card``, and after evaluation
    ``metrics``, ``calibrated_threshold``, ``evaluated``.
    """

    def __init__(self, root: Optional[PathLike] = None):
        self.root = Path(root).expanduser() if root else default_home()
        self.folder = self.root / ADAPTERS_DIR
        self.index = IndexFile(self.folder / INDEX_FILE)

    def __repr__(self) -> str:
        return f"AdapterRegistry({str(self.root)!r})"

    # -- reading ----------------------------------------------------------------------
    def list(self, domain: Optional[str] = None) -> List[dict]:
        """All records (optionally of one domain), by name then version."""
        records = self.index.read()["adapters"]
        if domain is not None:
            records = [r for r in records if r.get("domain") == domain]
        return sorted(records, key=lambda r: (r["name"], r["version"]))

    def _find(self, records: List[dict], ref: str) -> dict:
        name, version = parse_ref(ref)
        versions = [r for r in records if r["name"] == name]
        if not versions:
            known = ", ".join(sorted({r["name"] for r in records})) or "none"
            raise CachetuneError(f"no adapter named '{name}' in the registry (registered: {known})", self.index.path)
        if version is None:
            return max(versions, key=lambda r: r["version"])
        for record in versions:
            if record["version"] == version:
                return record
        have = ", ".join(str(r["version"]) for r in sorted(versions, key=lambda r: r["version"]))
        raise CachetuneError(f"adapter '{name}' has no version {version} (versions: {have})", self.index.path)

    def get(self, ref: str) -> dict:
        """The record for ``name`` (latest version) or ``name@version``."""
        return copy.deepcopy(self._find(self.index.read()["adapters"], ref))

    def find(self, domain: str) -> dict:
        """The adapter to serve for ``domain``.

        The latest version of the adapter *named* after the domain (the default name)
        wins; otherwise the most recently registered adapter of that domain.
        """
        records = self.index.read()["adapters"]
        mine = [r for r in records if r.get("domain") == domain]
        if any(r["name"] == domain for r in mine):
            return copy.deepcopy(self._find(mine, domain))
        if not mine:
            have = ", ".join(sorted({r.get("domain", "?") for r in records})) or "none"
            raise CachetuneError(
                f"no adapter for domain '{domain}' in the registry (domains: {have}); "
                f"train one with `cachetune train --register` or add one with `cachetune adapters add`",
                self.index.path,
            )
        return copy.deepcopy(mine[-1])  # the index lists records in the order they were added

    def folder_of(self, name: str, version: int) -> Path:
        """``adapters/<name>/<version>``, checked to lie inside the registry (no ``..``, no link out)."""
        check_name(name)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CachetuneError(f"bad adapter version {version!r}", self.index.path)
        folder = self.folder / name / str(version)
        inside = os.path.realpath(self.folder)
        if os.path.commonpath([inside, os.path.realpath(folder)]) != inside:
            raise CachetuneError(f"adapter folder of {name}@{version} leads outside the registry", folder)
        return folder

    def path_of(self, record: dict) -> Path:
        """The folder of ``record``: derived from its name and version, never from its stored path."""
        return self.folder_of(record["name"], record["version"])

    def resolve(self, ref: str) -> Path:
        """The folder holding ``ref``'s adapter files."""
        return self.path_of(self.get(ref))

    # -- integrity --------------------------------------------------------------------
    def record_problems(self, record: dict) -> List[str]:
        """One line per missing or corrupt file of ``record`` (empty when intact)."""
        folder = self.path_of(record)
        if not folder.is_dir():
            return [f"{record['ref']}: adapter folder is missing ({folder})"]
        return [
            f"{record['ref']}: {name} is {problem} ({folder / name})"
            for name, problem in file_problems(folder, record["files"]).items()
        ]

    def check(self, ref_or_record: Union[str, dict]) -> Path:
        """Re-hash the adapter's files; its folder if intact, else an error naming the file."""
        record = self.get(ref_or_record) if isinstance(ref_or_record, str) else ref_or_record
        folder = self.path_of(record)
        if not folder.is_dir():
            raise CachetuneError(f"adapter folder of {record['ref']} is missing", folder)
        problems = file_problems(folder, record["files"])
        if problems:
            name, problem = next(iter(problems.items()))
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise CachetuneError(
                f"adapter file of {record['ref']} is {problem}{more}; refusing to load it "
                f"(`cachetune adapters verify` lists all problems)",
                folder / name,
            )
        check_finite_weights(folder / PEFT_WEIGHTS)  # registered before add refused such weights
        return folder

    def verify(self) -> List[str]:
        """Re-hash every registered file; list problems (missing/corrupt files, stray folders)."""
        records = self.list()
        problems: List[str] = []
        for record in records:
            problems.extend(self.record_problems(record))
        known = {self.path_of(r).resolve() for r in records}
        if self.folder.is_dir():
            for name_dir in sorted(p for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                for version_dir in sorted(p for p in name_dir.iterdir() if p.is_dir()):
                    if version_dir.resolve() not in known:
                        problems.append(f"{version_dir}: folder is not in the index (an interrupted add or remove?)")
        for stale in stale_folders(self.folder / STAGING_DIR):
            problems.append(f"{stale}: left by an interrupted add ({folder_bytes(stale) / 1e6:.1f} MB); "
                            f"the next `cachetune adapters add` removes it")
        return problems

    # -- writing ----------------------------------------------------------------------
    def check_writable(self) -> None:
        """That an add would get past the index and the folder (checked before a long job that ends in one)."""
        self.index.read()
        check_writable(self.folder, "--registry")

    def add(self, adapter_dir: PathLike, name: Optional[str] = None) -> dict:
        """Validate ``adapter_dir``, copy it in as the next version of ``name``; return the record.

        ``name`` defaults to the card's domain. Versions count up per name and are never
        reused, even after a removal.
        """
        adapter_dir = Path(adapter_dir)
        if name is not None:
            check_name(name)  # before any file is read or copied
        info = inspect_adapter(adapter_dir)
        name = check_name(name or info["domain"])
        self.index.read()  # an index that list and verify reject is refused before any copy

        # Copy and hash outside the lock: other writers only wait for the rename + index write.
        moved: Optional[Path] = None
        with staging_folder(self.folder / STAGING_DIR, name) as staging:
            try:
                for file_name in info["files"]:
                    copy_regular_file(adapter_dir / file_name, staging / file_name)
                record = {
                    "name": name,
                    "version": None,
                    "ref": None,
                    "domain": info["domain"],
                    "path": None,
                    "base_model": info["base_model"],
                    "lora": info["lora"],
                    "files": hash_files(staging, info["files"]),
                    "created": info["card"].get("created") or _now(),
                    "registered": None,
                    "source": str(adapter_dir.resolve()),
                    "domain_plugin": info["domain_plugin"],
                    "card": info["card"],
                    "metrics": None,
                    "calibrated_threshold": None,
                    "evaluated": None,
                }
                with self.index.update() as index:
                    remove_stale(self.folder / STAGING_DIR)  # left by killed adds; ours is locked
                    other = next((r for r in index["adapters"]
                                  if r["name"] == name and r["domain"] != info["domain"]), None)
                    if other is not None:  # one name, one domain: `find(domain)` relies on it
                        raise CachetuneError(
                            f"adapter name '{name}' already holds {other['domain']} adapters ({other['ref']}), "
                            f"this one is {info['domain']}: choose another --name", adapter_dir / "cachetune.json")
                    used = [r["version"] for r in index["adapters"] if r["name"] == name]
                    version = max([index["next_version"].get(name, 1), *(v + 1 for v in used)])
                    while self.folder_of(name, version).exists():  # left by a crash: never overwrite
                        version += 1
                    dest = self.folder_of(name, version)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.rename(staging, dest)
                    moved = dest
                    record.update(version=version, ref=f"{name}@{version}", path=f"{name}/{version}",
                                  registered=_now())
                    index["adapters"].append(record)
                    index["next_version"][name] = version + 1
            except BaseException:
                # The index was not written: a folder it does not point at must not linger.
                if moved is not None:
                    shutil.rmtree(moved, ignore_errors=True)
                raise
        return copy.deepcopy(record)

    def remove(self, ref: str) -> List[dict]:
        """Remove ``name@version``, or every version of ``name``; return the removed records."""
        name, version = parse_ref(ref)
        with self.index.update() as index:
            self._find(index["adapters"], ref)  # an unknown name/version is an error
            removed = [r for r in index["adapters"]
                       if r["name"] == name and (version is None or r["version"] == version)]
            index["adapters"] = [r for r in index["adapters"] if r not in removed]
            folders = [self.path_of(r) for r in removed]  # checked inside the registry before anything changes
        # Folders go after the index no longer points at them: a crash leaves a stray folder
        # (reported by verify), never a record without files.
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        name_dir = self.folder / check_name(name)
        if name_dir.is_dir() and not any(name_dir.iterdir()):
            name_dir.rmdir()
        return removed

    def update_metrics(self, ref: str, metrics: dict) -> dict:
        """Store evaluation ``metrics`` (and their calibrated threshold) on ``ref``'s record."""
        if not isinstance(metrics, dict):
            raise CachetuneError(f"metrics must be a dict, got {type(metrics).__name__}")
        try:
            metrics = json.loads(json.dumps(metrics))
        except (TypeError, ValueError) as exc:
            raise CachetuneError(f"metrics are not JSON-serialisable: {exc}") from None
        with self.index.update() as index:
            record = self._find(index["adapters"], ref)
            record["metrics"] = metrics
            if not record.get("calibration"):  # a user's own calibration, once selected, stays in force
                record["calibrated_threshold"] = calibrated_threshold(metrics)
            record["evaluated"] = _now()
            updated = copy.deepcopy(record)
        return updated

    def add_calibration(self, ref: str, calibration: dict) -> dict:
        """Store a named threshold calibration on ``ref`` and select it (serving and exports use it).

        A calibration of the same name is replaced; the others are kept.
        """
        name = calibration.get("name")
        if not isinstance(name, str) or not name.strip():
            raise CachetuneError("a calibration needs a name (--name)")
        threshold = calibration.get("threshold")
        if not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 1.0:
            raise CachetuneError(f"calibration '{name}' has no valid threshold: {threshold!r}")
        with self.index.update() as index:
            record = self._find(index["adapters"], ref)
            kept = [c for c in record.get("calibrations", []) if c.get("name") != name]
            record["calibrations"] = kept + [dict(calibration, created=_now())]
            record["calibration"] = name
            record["calibrated_threshold"] = float(threshold)
            updated = copy.deepcopy(record)
        return updated

    def select_calibration(self, ref: str, name: Optional[str]) -> dict:
        """Serve ``ref`` at calibration ``name``'s threshold; None goes back to the evaluation's threshold."""
        with self.index.update() as index:
            record = self._find(index["adapters"], ref)
            if name is None:
                record["calibration"] = None
                record["calibrated_threshold"] = calibrated_threshold(record.get("metrics") or {})
            else:
                found = [c for c in record.get("calibrations", []) if c.get("name") == name]
                if not found:
                    have = ", ".join(c.get("name", "?") for c in record.get("calibrations", [])) or "none"
                    raise CachetuneError(f"adapter '{record['ref']}' has no calibration '{name}' (has: {have})",
                                         self.index.path)
                record["calibration"] = name
                record["calibrated_threshold"] = float(found[0]["threshold"])
            updated = copy.deepcopy(record)
        return updated

    # -- export -----------------------------------------------------------------------
    def export(self, ref: str, output_dir: PathLike, merged: bool = False, device: Optional[str] = None,
               write: Optional[Callable[[dict, Path, Path], None]] = None) -> Path:
        """Write ``ref`` to ``output_dir``: its adapter files, (``merged``) a plain SentenceTransformer, or
        what ``write(record, adapter folder, new folder)`` writes (the ONNX export: core/serving/onnx.py)."""
        record = self.get(ref)
        folder = self.check(record)
        output_dir = check_output(output_dir, "--output", folder=True)
        if output_dir.exists() and any(output_dir.iterdir()):
            raise CachetuneError("output folder exists and is not empty (--output)", output_dir)
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
        try:
            if write is not None:
                write(record, folder, tmp)
            elif merged:
                from cachetune.core.adapters import save_merged

                info = {"ref": record["ref"], "domain": record["domain"], "base_model": record["base_model"],
                        "lora": record["lora"], "adapter_files_sha256": record["files"],
                        "calibrated_threshold": record.get("calibrated_threshold")}
                save_merged(folder, tmp, record["base_model"], info, device=device)
            else:
                for file_name in record["files"]:
                    shutil.copyfile(folder / file_name, tmp / file_name)
            os.replace(tmp, output_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return output_dir

    def export_merged(self, ref: str, output_dir: PathLike, device: Optional[str] = None) -> Path:
        """``ref``'s LoRA merged into its base model, saved as a plain SentenceTransformer folder."""
        return self.export(ref, output_dir, merged=True, device=device)


def resolve_adapter(spec: Optional[str], registry_dir: Optional[PathLike] = None
                    ) -> Tuple[Optional[Path], Optional[str]]:
    """``--adapter NAME|DIR`` -> (adapter folder, the registry record's ``name@version`` or None).

    A registered adapter's files are re-hashed first (:meth:`AdapterRegistry.check`): a corrupt
    adapter is refused, never loaded.
    """
    if not spec:
        return None, None
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CachetuneError("--adapter expects an adapter folder or a registry name, got a file", spec)
        return path, None
    if spec.startswith((".", "/", "~")) or "/" in spec or "\\" in spec:
        raise CachetuneError("adapter folder not found (--adapter)", spec)
    # "latest" is resolved once, here: the record's name@version is what is evaluated and what
    # --register-metrics stores to, even if another version is registered meanwhile.
    registry = AdapterRegistry(registry_dir)
    record = registry.get(spec)
    return registry.check(record), record["ref"]


def register_trained_adapter(adapter_dir: PathLike, registry_dir: Optional[PathLike] = None,
                             name: Optional[str] = None) -> dict:
    """Add a freshly trained adapter to the registry (``train --register``); return its record."""
    return AdapterRegistry(registry_dir).add(adapter_dir, name=name)
