"""The registry against hostile folders and indexes: links and special files refused, every
folder derived from a validated name and version inside the root, index records checked before
anything is read, copied or deleted, stale staging cleaned and reported, bad weights refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from cachetune.core.errors import CachetuneError
from cachetune.registry import AdapterRegistry
from make_adapter import make_adapter


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model):
    return make_adapter(tiny_model, tmp_path_factory.mktemp("safety") / "prog", "programming", seed=1)


def copy_of(adapter, tmp_path, name="copy"):
    return shutil.copytree(adapter, tmp_path / name)


def tree(folder):
    """Every path under ``folder`` with its bytes: to show that nothing was written."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def one_line_error(run_cli, args):
    res = run_cli(args)
    lines = res.stderr.strip().splitlines()
    assert res.exit_code != 0 and len(lines) == 1, res.stderr
    return lines[0]


def test_add_refuses_a_symlinked_file(run_cli, adapter, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2")
    folder = copy_of(adapter, tmp_path)
    (folder / "README.md").unlink()
    (folder / "README.md").symlink_to(secret)
    reg = tmp_path / "reg"
    line = one_line_error(run_cli, ["adapters", "add", folder, "--registry", reg])
    assert f"{folder / 'README.md'}: is a symbolic link" in line
    assert not any("secret" in str(v) for v in tree(reg).values())
    assert not (reg / "adapters" / "programming").exists()


def test_add_refuses_a_fifo(run_cli, adapter, tmp_path):
    folder = copy_of(adapter, tmp_path)
    (folder / "README.md").unlink()
    os.mkfifo(folder / "README.md")
    line = one_line_error(run_cli, ["adapters", "add", folder, "--registry", tmp_path / "reg"])
    assert f"{folder / 'README.md'}: is not a regular file" in line


def test_copy_refuses_a_link_swapped_in_after_the_check(adapter, tmp_path):
    from cachetune.registry.adapter_files import copy_regular_file

    link = tmp_path / "link"
    link.symlink_to(adapter / "README.md")
    with pytest.raises(CachetuneError, match="cannot read adapter file"):
        copy_regular_file(link, tmp_path / "dest")


def registered(adapter, tmp_path):
    reg = AdapterRegistry(tmp_path / "reg")
    reg.add(adapter)
    return reg


def edit_index(reg, change):
    data = json.loads(reg.index.path.read_text())
    change(data)
    reg.index.path.write_text(json.dumps(data))


def test_index_path_outside_the_registry_deletes_nothing(run_cli, adapter, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    reg = registered(adapter, tmp_path)
    edit_index(reg, lambda d: d["adapters"][0].update(path="../../victim"))
    before = tree(tmp_path / "reg")
    for args in (["adapters", "remove", "programming"], ["adapters", "list"], ["adapters", "verify"],
                 ["adapters", "export", "programming", "--output", tmp_path / "out"],
                 ["similarity", "--adapter", "programming", "a", "b"]):
        line = one_line_error(run_cli, [*args, "--registry", tmp_path / "reg"])
        assert f"{reg.index.path}: registry index record 1 (programming@1) has path '../../victim'" in line
    assert (victim / "precious.txt").read_text() == "keep me"
    assert tree(tmp_path / "reg") == before and not (tmp_path / "out").exists()


def test_name_folder_linked_outside_the_registry_deletes_nothing(run_cli, adapter, tmp_path):
    reg = registered(adapter, tmp_path)
    outside = tmp_path / "outside"
    shutil.move(str(reg.folder / "programming"), outside)
    (reg.folder / "programming").symlink_to(outside)
    line = one_line_error(run_cli, ["adapters", "remove", "programming", "--registry", tmp_path / "reg"])
    assert "adapter folder of programming@1 leads outside the registry" in line
    assert (outside / "1" / "adapter_model.safetensors").is_file()
    assert [r["ref"] for r in reg.list()] == ["programming@1"]  # the index was not changed either


@pytest.mark.parametrize("change, needle", [
    (lambda d: d["adapters"][0].pop("version"), "record 1 (programming@1) has no 'version'"),
    (lambda d: d["adapters"][0].update(name="../x"), "bad adapter name '../x'"),
    (lambda d: d["adapters"][0].update(version="1"), "has a bad version '1'"),
    (lambda d: d["adapters"][0]["files"].update({"../../etc/passwd": "0" * 64}), "not an adapter file"),
    (lambda d: d["adapters"][0]["files"].update({"README.md": "nope"}), "bad sha256 for README.md"),
    (lambda d: d["adapters"].append(d["adapters"][0]), "lists programming@1 twice"),
    (lambda d: d["adapters"].append("x"), "record 2 is not an object"),
    (lambda d: d.update(next_version={"programming": "2"}), "bad 'next_version'"),
])
def test_malformed_index_is_one_line_naming_it(run_cli, adapter, tmp_path, change, needle):
    reg = registered(adapter, tmp_path)
    edit_index(reg, change)
    before = tree(tmp_path / "reg")
    for args in (["adapters", "list"], ["adapters", "show", "programming"], ["adapters", "add", adapter]):
        line = one_line_error(run_cli, [*args, "--registry", tmp_path / "reg"])
        assert line.startswith(f"Error: {reg.index.path}: ") and needle in line
    assert tree(tmp_path / "reg") == before  # add copied nothing


@pytest.mark.parametrize("name", ["index.json", "INDEX.JSON", "index.json.lock", ".staging", "../up", "a/b"])
def test_reserved_and_unsafe_names_refused_up_front(run_cli, adapter, tmp_path, name):
    line = one_line_error(run_cli, ["adapters", "add", adapter, "--name", name, "--registry", tmp_path / "reg"])
    assert f"bad adapter name '{name}'" in line
    assert not (tmp_path / "reg").exists()


KILL_DURING_COPY = """
import os, signal, sys
from cachetune.registry import adapter_files, registry
copy = adapter_files.copy_regular_file
def copy_then_die(src, dest):
    copy(src, dest)
    os.kill(os.getpid(), signal.SIGKILL)
registry.copy_regular_file = copy_then_die
registry.AdapterRegistry(sys.argv[2]).add(sys.argv[1])
"""


def test_stale_staging_is_reported_then_cleaned(run_cli, adapter, tmp_path):
    reg = AdapterRegistry(tmp_path / "reg")
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_COPY, str(adapter), str(reg.root)])
    assert killed.returncode == -9
    (left,) = [p for p in (reg.folder / ".staging").iterdir() if p.is_dir()]
    assert any(left.iterdir())

    res = run_cli(["adapters", "verify", "--registry", reg.root])
    assert res.exit_code == 1
    assert f"{left}: left by an interrupted add" in res.stdout and "the next `cachetune adapters add`" in res.stdout

    from cachetune.registry.staging import staging_folder

    with staging_folder(reg.folder / ".staging", "busy") as busy:  # an add still copying: not stale
        (busy / "f").write_text("x")
        assert run_cli(["adapters", "add", adapter, "--registry", reg.root]).exit_code == 0
        assert not left.exists() and busy.is_dir()
        assert "busy" not in run_cli(["adapters", "verify", "--registry", reg.root]).stdout
    assert sorted(p.name for p in (reg.folder / ".staging").iterdir()) == []
    assert run_cli(["adapters", "verify", "--registry", reg.root]).exit_code == 0


def test_base_model_of_peft_config_and_card_must_agree(run_cli, adapter, tmp_path):
    folder = copy_of(adapter, tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "BAAI/bge-small-en-v1.5"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    line = one_line_error(run_cli, ["adapters", "add", folder, "--registry", tmp_path / "reg"])
    assert f"{folder / 'adapter_config.json'}: names base model 'BAAI/bge-small-en-v1.5' but the card says" in line


def nan_copy(adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = copy_of(adapter, tmp_path, "nan")
    weights = load_file(str(folder / "adapter_model.safetensors"))
    name = sorted(k for k in weights if "lora_B" in k)[0]
    weights[name][0, 0] = float("nan")
    save_file(weights, str(folder / "adapter_model.safetensors"))
    return folder


def test_nan_weights_refused_at_add_and_load(run_cli, adapter, tmp_path):
    folder = nan_copy(adapter, tmp_path)
    weights = folder / "adapter_model.safetensors"
    line = one_line_error(run_cli, ["adapters", "add", folder, "--registry", tmp_path / "reg"])
    assert f"{weights}: adapter weights hold NaN or infinite values" in line
    line = one_line_error(run_cli, ["similarity", "--adapter", folder, "a query", "another"])
    assert f"{weights}: adapter weights hold NaN" in line
