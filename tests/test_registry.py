"""The adapter registry: round trip, validation, integrity, metrics, atomic and concurrent writes."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import pytest

from cachetune.core.errors import CachetuneError
from cachetune.core.models import weights_sha256
from cachetune.registry import AdapterRegistry, register_trained_adapter
from cachetune.core.models import sha256_file
from make_adapter import make_adapter, write_card


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model):
    """Two real LoRA adapters on the tiny BERT: programming and medical."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "programming": make_adapter(tiny_model, root / "prog", "programming", seed=1),
        "medical": make_adapter(tiny_model, root / "med", "medical", seed=2),
    }


def broken_copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def test_add_list_show_remove_round_trip(tmp_path, adapters, tiny_model):
    reg = AdapterRegistry(tmp_path / "reg")
    first = reg.add(adapters["programming"])
    assert (first["name"], first["version"], first["ref"], first["domain"]) == \
           ("programming", 1, "programming@1", "programming")
    assert first["base_model"] == {"id": tiny_model, "weights_sha256": weights_sha256(tiny_model)}
    assert first["lora"] == {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "value"]}
    assert first["domain_plugin"] == {"name": "programming", "package": "cachetune", "version": "0.1.0"}
    assert first["card"] == json.loads((adapters["programming"] / "cachetune.json").read_text())
    assert set(first["files"]) == {"adapter_config.json", "adapter_model.safetensors", "cachetune.json", "README.md"}
    for name, sha in first["files"].items():
        assert sha == sha256_file(adapters["programming"] / name)
        assert (reg.resolve("programming@1") / name).is_file()
    assert first["metrics"] is None and first["calibrated_threshold"] is None

    assert reg.add(adapters["programming"])["version"] == 2
    custom = reg.add(adapters["medical"], name="med-v2")
    assert custom["ref"] == "med-v2@1" and custom["domain"] == "medical"
    with pytest.raises(CachetuneError, match="'programming' already holds programming adapters"):
        reg.add(adapters["medical"], name="programming")

    fresh = AdapterRegistry(tmp_path / "reg")  # everything comes back from disk
    assert [r["ref"] for r in fresh.list()] == ["med-v2@1", "programming@1", "programming@2"]
    assert [r["ref"] for r in fresh.list(domain="medical")] == ["med-v2@1"]
    assert fresh.get("programming")["version"] == 2
    assert fresh.get("programming@1")["version"] == 1
    assert fresh.find("medical")["ref"] == "med-v2@1"  # no adapter named after the domain: latest of it
    assert fresh.find("programming")["ref"] == "programming@2"

    assert [r["ref"] for r in fresh.remove("programming@2")] == ["programming@2"]
    assert not (reg.folder / "programming" / "2").exists()
    assert fresh.get("programming")["version"] == 1
    assert fresh.add(adapters["programming"])["version"] == 3  # numbers are never reused
    assert [r["ref"] for r in fresh.remove("programming")] == ["programming@1", "programming@3"]
    assert not (reg.folder / "programming").exists()
    assert [r["ref"] for r in fresh.list()] == ["med-v2@1"]

    with pytest.raises(CachetuneError, match="no adapter named 'programming'"):
        fresh.get("programming")
    with pytest.raises(CachetuneError, match=r"has no version 7 \(versions: 1\)"):
        fresh.get("med-v2@7")
    with pytest.raises(CachetuneError, match="no adapter for domain 'cooking'"):
        fresh.find("cooking")
    assert fresh.verify() == []


def _drop(folder, name):
    (folder / name).unlink()


def _truncate_weights(folder, name):
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[:-100])


def _card(folder, **changes):
    card = json.loads((folder / "cachetune.json").read_text())
    card.update(changes)
    for key, value in list(card.items()):
        if value is None:
            del card[key]
    (folder / "cachetune.json").write_text(json.dumps(card))


@pytest.mark.parametrize("breakage, file_named, message", [
    (lambda f: _drop(f, "adapter_model.safetensors"), "adapter_model.safetensors", "missing"),
    (lambda f: _truncate_weights(f, "adapter_model.safetensors"), "adapter_model.safetensors", "truncated"),
    (lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"),
     "adapter_model.safetensors", "header is not JSON"),
    (lambda f: _drop(f, "cachetune.json"), "", "no cachetune.json card"),
    (lambda f: (f / "cachetune.json").write_text('{\n  "domain": "programming",\n  oops\n}'),
     "cachetune.json", "invalid JSON"),
    (lambda f: _card(f, domain=None), "cachetune.json", "card has no 'domain'"),
    (lambda f: _card(f, lora={"r": 16, "alpha": 16}), "cachetune.json", "lora.r=16"),
    (lambda f: _card(f, base_model="not an object"), "cachetune.json", "must be an object"),
    (lambda f: _drop(f, "adapter_config.json"), "", "no adapter_config.json"),
    (lambda f: (f / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3", "r": 8})),
     "adapter_config.json", "not a LoRA adapter"),
])
def test_add_refuses_broken_adapter_folders(tmp_path, adapters, breakage, file_named, message):
    folder = broken_copy(adapters["programming"], tmp_path / "broken")
    breakage(folder)
    reg = AdapterRegistry(tmp_path / "reg")
    with pytest.raises(CachetuneError, match=message) as info:
        reg.add(folder)
    assert info.value.path == (str(folder / file_named) if file_named else str(folder))
    if message == "invalid JSON":
        assert info.value.line == 3
    assert reg.list() == []
    assert not reg.folder.exists()  # validation happens before anything is written


@pytest.mark.parametrize("name", ["a@b", "../escape", "", "-leading-dash", "x" * 65])
def test_add_refuses_bad_names(tmp_path, adapters, name):
    reg = AdapterRegistry(tmp_path / "reg")
    with pytest.raises(CachetuneError, match="bad adapter name"):
        reg.add(adapters["programming"], name=name or " ")
    assert reg.list() == []


def test_add_refuses_base_model_mismatch(tmp_path, adapters):
    folder = broken_copy(adapters["programming"], tmp_path / "other-base")
    card = json.loads((folder / "cachetune.json").read_text())
    card["base_model"]["weights_sha256"] = "ab" * 32  # trained on different weights than the local copy
    (folder / "cachetune.json").write_text(json.dumps(card))
    with pytest.raises(CachetuneError, match=r"base model mismatch.*abababababab"):
        AdapterRegistry(tmp_path / "reg").add(folder)


def test_verify_reports_corrupt_missing_and_stray_files(tmp_path, adapters):
    reg = AdapterRegistry(tmp_path / "reg")
    reg.add(adapters["programming"])
    reg.add(adapters["medical"])
    assert reg.verify() == []

    weights = reg.resolve("programming") / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # same size, one flipped bit pattern in the tensor data
    weights.write_bytes(bytes(data))
    (reg.resolve("medical") / "adapter_config.json").unlink()
    (reg.folder / "medical" / "9").mkdir()

    problems = reg.verify()
    assert len(problems) == 3
    assert any(p.startswith("programming@1: adapter_model.safetensors is corrupt") and str(weights) in p
               for p in problems)
    assert any(p.startswith("medical@1: adapter_config.json is missing") for p in problems)
    assert any("medical/9: folder is not in the index" in p for p in problems)

    with pytest.raises(CachetuneError, match="corrupt") as info:
        reg.check("programming")
    assert info.value.path == str(weights)


def test_update_metrics_stores_the_calibrated_threshold(tmp_path, adapters):
    reg = AdapterRegistry(tmp_path / "reg")
    reg.add(adapters["programming"])
    reg.add(adapters["programming"])
    metrics = {"base": {"pairs": {"calibrated_threshold": 0.7}},
               "adapter": {"pairs": {"calibrated_threshold": 0.8123, "f1": 0.9}}}
    updated = reg.update_metrics("programming@1", metrics)
    assert updated["calibrated_threshold"] == pytest.approx(0.8123)
    record = AdapterRegistry(tmp_path / "reg").get("programming@1")
    assert record["metrics"] == metrics and record["calibrated_threshold"] == pytest.approx(0.8123)
    assert record["evaluated"]
    assert reg.get("programming@2")["calibrated_threshold"] is None
    assert reg.update_metrics("programming", {"accuracy": 0.5})["calibrated_threshold"] is None
    with pytest.raises(CachetuneError, match="must be a dict"):
        reg.update_metrics("programming", [1, 2])
    with pytest.raises(CachetuneError, match="no adapter named 'nope'"):
        reg.update_metrics("nope", {})


def test_failed_index_write_keeps_the_old_index(tmp_path, adapters, monkeypatch):
    import cachetune.core.jsonl as jsonl

    reg = AdapterRegistry(tmp_path / "reg")
    reg.add(adapters["programming"])
    before = reg.index.path.read_bytes()

    real_dump = json.dump

    def failing_dump(obj, fh, **kwargs):  # the disk fills up half-way through the write
        fh.write("{\n")
        raise OSError("No space left on device")

    monkeypatch.setattr(jsonl.json, "dump", failing_dump)
    with pytest.raises(OSError, match="No space left"):
        reg.add(adapters["programming"])
    monkeypatch.setattr(jsonl.json, "dump", real_dump)

    assert reg.index.path.read_bytes() == before
    assert [r["ref"] for r in reg.list()] == ["programming@1"]
    assert sorted(p.name for p in (reg.folder / "programming").iterdir()) == ["1"]
    assert [p.name for p in reg.folder.iterdir() if p.name.endswith(".tmp")] == []
    assert list((reg.folder / ".staging").iterdir()) == []
    assert reg.add(adapters["programming"])["version"] == 2


def test_corrupt_index_is_reported_with_its_line(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg")
    reg.folder.mkdir(parents=True)
    reg.index.path.write_text('{\n  "adapters": [\n    {,\n  ]\n}\n')
    with pytest.raises(CachetuneError, match="registry index is not valid JSON") as info:
        reg.list()
    assert (info.value.path, info.value.line) == (str(reg.index.path), 3)


def test_default_root_and_register_trained_adapter(tmp_path, adapters, monkeypatch):
    monkeypatch.setenv("CACHETUNE_HOME", str(tmp_path / "home"))
    assert AdapterRegistry().root == tmp_path / "home"
    record = register_trained_adapter(adapters["medical"])
    assert record["ref"] == "medical@1"
    assert (tmp_path / "home" / "adapters" / "medical" / "1" / "adapter_model.safetensors").is_file()
    other = register_trained_adapter(adapters["medical"], registry_dir=tmp_path / "elsewhere", name="m")
    assert other["ref"] == "m@1" and AdapterRegistry(tmp_path / "elsewhere").get("m")["domain"] == "medical"
    monkeypatch.delenv("CACHETUNE_HOME")
    assert AdapterRegistry().root == Path("~/.cache/cachetune").expanduser()


def _add_many(registry_dir: str, adapter_dir: str, count: int, barrier) -> None:
    barrier.wait()  # start together so the writers really overlap
    for _ in range(count):
        register_trained_adapter(adapter_dir, registry_dir=registry_dir, name="shared")


def test_concurrent_writers_get_distinct_versions(tmp_path, adapters):
    ctx = multiprocessing.get_context("spawn")  # real separate interpreters, no forked torch state
    writers, each = 4, 3
    barrier = ctx.Barrier(writers)
    procs = [ctx.Process(target=_add_many, args=(str(tmp_path / "reg"), str(adapters["programming"]), each, barrier))
             for _ in range(writers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0] * writers

    reg = AdapterRegistry(tmp_path / "reg")
    records = reg.list()
    assert sorted(r["version"] for r in records) == list(range(1, writers * each + 1))
    assert len({r["path"] for r in records}) == writers * each
    assert reg.verify() == []
    assert list((reg.folder / ".staging").iterdir()) == []
