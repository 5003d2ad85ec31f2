"""Hostile input, command by command: every row must fail with a non-zero exit, exactly one
line on stderr naming the file or option at fault, and nothing written or overwritten.

A new command joins by adding rows to ``ROWS``. Paths in ``args``, ``files`` and ``named``
may use ``{tmp}`` (this row's own folder, where ``files`` are created), ``{reg}`` (this row's copy
of a registry holding ``programming@1``), ``{adapter}`` (that adapter's source folder), ``{tiny}`` (a tiny
random BERT) and ``{triplets}`` (a good triplets file). ``{tmp}`` (with ``{reg}`` in it) and
``{adapter}`` are compared byte for byte before and after each row. Everything runs in-process through the
real entry point, and fails before any model loads, so the whole table takes seconds.

A row with ``plugin`` runs with that plugin registered: the disabled plugin is reported by
name once, as one ``Warning:`` line saying why (``warning``) or inside the error line itself.
"""

from __future__ import annotations

import json
import os
import shutil
import types
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence

import click
import pytest

from cachetune import hookimpl
from cachetune.core.plugin_manager import get_plugin_manager, register_module
from make_adapter import make_adapter

NOT_UTF8 = b"sort a list\nread a \xff\xfe file\n"
QUERY = json.dumps({"id": "q1", "query": "sort a list in python", "domain": "programming"}) + "\n"
PAIR = '{{"sentence1": "sort a list", "sentence2": "order a list", "label": 1, "inclusion_probability": {p}}}\n'
TRIPLET = json.dumps({"anchor": "order a list", "positive": "sort a list", "negative": "reverse a string"}) + "\n"


@dataclass
class Row:
    id: str
    args: Sequence[str]
    named: str  # what the error line must contain: the file (and line) or the option at fault
    message: str = ""  # and this
    files: Dict[str, object] = field(default_factory=dict)  # {name: text, bytes, or a callable(path)}
    plugin: Optional[Callable[[], types.ModuleType]] = None
    warning: str = ""  # the disabled plugin's warning line must contain this (why it was disabled)


def plugin(name, **hooks):
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        fn.__name__ = hook_name
        setattr(module, hook_name, hookimpl(fn))
    return module


def raises(*_args):
    raise RuntimeError("boom")


def broken_commands():
    return plugin("brokencmd", register_commands=raises)


def domain_that_is_a_string():
    return plugin("notadomain", register_domains=lambda register: register("toy"))


def raising_domains():
    return plugin("brokendomain", register_domains=raises)


def symlink_to_secret(path):
    shutil.copytree(ADAPTER["dir"], path)
    (path / "README.md").unlink()
    secret = path.parent / "secret.txt"
    secret.write_text("password=hunter2")
    (path / "README.md").symlink_to(secret)


def fifo_readme(path):
    shutil.copytree(ADAPTER["dir"], path)
    (path / "README.md").unlink()
    os.mkfifo(path / "README.md")


def nan_weights(path):
    from safetensors.torch import load_file, save_file

    shutil.copytree(ADAPTER["dir"], path)
    weights = load_file(str(path / "adapter_model.safetensors"))
    key = sorted(k for k in weights if "lora_B" in k)[0]
    weights[key][0, 0] = float("inf")
    save_file(weights, str(path / "adapter_model.safetensors"))


def other_base(path):
    shutil.copytree(ADAPTER["dir"], path)
    config = json.loads((path / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "BAAI/bge-small-en-v1.5"
    (path / "adapter_config.json").write_text(json.dumps(config))


def registry_with(change):
    """A copy of the shared registry whose index.json ``change`` edits."""
    def build(path):
        shutil.copytree(ADAPTER["reg"], path)
        index = path / "adapters" / "index.json"
        data = json.loads(index.read_text())
        change(data)
        index.write_text(json.dumps(data))
    return build


def bad_checkpoint(path):
    folder = path / "checkpoints" / "checkpoint-2"
    folder.mkdir(parents=True)
    (folder / "train_state.json").write_text(json.dumps({"global_step": 2}))
    (folder / "trainer_state.safetensors").write_bytes(b"")


def pickle_checkpoint(path):
    folder = path / "checkpoints" / "checkpoint-2"
    folder.mkdir(parents=True)
    (folder / "train_state.json").write_text("{}")
    (folder / "trainer_state.pt").write_bytes(b"\x80\x04K\x01.")


def prepared_output(path):
    path.mkdir()
    for name in ("train.jsonl", "holdout.jsonl", "prepare.json"):
        (path / name).write_text("previous\n")


ADAPTER: dict = {}  # filled by the module fixture: the shared adapter folder and registry
PREP = ["prepare", "--domain", "programming"]
GEN = ["generate", "--domain", "programming", "--input", "{tmp}/q.jsonl", "--output", "{tmp}/t.jsonl"]
TRAIN = ["train", "--domain", "programming", "--base-model", "{tiny}", "--quiet"]
EVAL = ["evaluate", "--domain", "programming", "--adapter", "{adapter}", "--output", "{tmp}/eval"]
REG = ["--registry", "{reg}"]
ROWS = [
    # -- prepare ------------------------------------------------------------------------
    Row("prepare-txt-not-utf8", [*PREP, "--source", "{tmp}/q.txt", "--output", "{tmp}/o"], "{tmp}/q.txt:2",
        "not UTF-8", {"q.txt": NOT_UTF8}),
    Row("prepare-jsonl-not-utf8", [*PREP, "--source", "{tmp}/q.jsonl", "--output", "{tmp}/o"], "{tmp}/q.jsonl:2",
        "not UTF-8", {"q.jsonl": QUERY.encode() + b'{"query": "\xff"}\n'}),
    Row("prepare-csv-unclosed-quote", [*PREP, "--source", "{tmp}/q.csv", "--output", "{tmp}/o"], "{tmp}/q.csv:3",
        "quote that is never closed", {"q.csv": 'query,n\nsort a list,1\n"read a file,2\nmerge dicts,3\n'}),
    Row("prepare-query-is-a-list", [*PREP, "--source", "{tmp}/q.jsonl", "--output", "{tmp}/o"], "{tmp}/q.jsonl:1",
        "the query is a list", {"q.jsonl": '{"query": ["sort a list", "read a file"]}\n'}),
    Row("prepare-json-invalid", [*PREP, "--source", "{tmp}/q.json", "--output", "{tmp}/o"], "{tmp}/q.json:3",
        "invalid JSON", {"q.json": '[\n  "sort a list",\n  oops\n]'}),
    Row("prepare-missing-field", [*PREP, "--source", "{tmp}/q.jsonl", "--query-field", "title", "--output",
                                  "{tmp}/o"], "{tmp}/q.jsonl:1", "no 'title' field", {"q.jsonl": QUERY}),
    Row("prepare-source-missing", [*PREP, "--source", "{tmp}/nope.txt", "--output", "{tmp}/o"], "{tmp}/nope.txt",
        "not found"),
    Row("prepare-holdout", [*PREP, "--holdout", "1.5", "--output", "{tmp}/o"], "--holdout"),
    Row("prepare-limit", [*PREP, "--limit", "0", "--output", "{tmp}/o"], "--limit"),
    Row("prepare-would-overwrite", [*PREP, "--output", "{tmp}/prev"], "{tmp}/prev", "--overwrite",
        {"prev": prepared_output}),
    Row("prepare-into-registry", [*PREP, "--output", "{reg}/adapters/programming/1", "--overwrite"],
        "{reg}/adapters/programming/1", "inside the adapter registry"),
    Row("prepare-output-under-a-file", [*PREP, "--output", "{tmp}/f.txt/o"], "{tmp}/f.txt", "not a folder",
        {"f.txt": "a file"}),
    # -- generate -----------------------------------------------------------------------
    Row("generate-temperature-nan", [*GEN, "--temperature", "nan"], "--temperature", "finite",
        {"q.jsonl": QUERY}),
    Row("generate-max-tokens-0", [*GEN, "--max-tokens", "0"], "--max-tokens", files={"q.jsonl": QUERY}),
    Row("generate-option-inf", [*GEN, "--backend", "openai", "-o", "timeout", "inf"], "'timeout'", "finite",
        {"q.jsonl": QUERY}),
    Row("generate-unknown-option", [*GEN, "-o", "nope", "1"], "'nope'", files={"q.jsonl": QUERY}),
    Row("generate-input-not-utf8", GEN, "{tmp}/q.jsonl:2", "not UTF-8", {"q.jsonl": QUERY.encode() + b"\xff\n"}),
    Row("generate-input-bad-json", GEN, "{tmp}/q.jsonl:1", "invalid JSON", {"q.jsonl": "{oops\n"}),
    Row("generate-output-is-input", ["generate", "--domain", "programming", "--input", "{tmp}/q.jsonl", "--output",
                                     "{tmp}/q.jsonl"], "{tmp}/q.jsonl", "must not be the input",
        {"q.jsonl": QUERY}),
    Row("generate-into-registry", ["generate", "--domain", "programming", "--input", "{tmp}/q.jsonl", "--output",
                                   "{reg}/adapters/t.jsonl"], "{reg}/adapters/t.jsonl", "inside the adapter registry",
        {"q.jsonl": QUERY}),
    Row("generate-batch-size-0", [*GEN, "--batch-size", "0"], "--batch-size", files={"q.jsonl": QUERY}),
    # -- train --------------------------------------------------------------------------
    Row("train-data-not-utf8", [*TRAIN, "--train-data", "{tmp}/t.jsonl", "--output", "{tmp}/a"], "{tmp}/t.jsonl:2",
        "not UTF-8", {"t.jsonl": TRIPLET.encode() + b"\xff\n"}),
    Row("train-data-missing", [*TRAIN, "--train-data", "{tmp}/nope.jsonl", "--output", "{tmp}/a"],
        "{tmp}/nope.jsonl", "not found"),
    Row("train-into-registry", [*TRAIN, "--train-data", "{triplets}", "--output", "{reg}/adapters/programming/1",
                                "--overwrite"], "{reg}/adapters/programming/1", "inside the adapter registry"),
    Row("train-output-under-a-file", [*TRAIN, "--train-data", "{triplets}", "--output", "{tmp}/f.txt/a"],
        "{tmp}/f.txt", "not a folder", {"f.txt": "a file"}),
    Row("train-lr-inf", [*TRAIN, "--train-data", "{triplets}", "--output", "{tmp}/a", "--lr", "inf"], "--lr",
        "finite"),
    Row("train-temperature-nan", [*TRAIN, "--train-data", "{triplets}", "--output", "{tmp}/a", "--temperature",
                                  "nan"], "--temperature", "finite"),
    Row("train-register-bad-index", [*TRAIN, "--train-data", "{triplets}", "--output", "{tmp}/a", "--register",
                                     "--registry", "{tmp}/r"], "{tmp}/r/adapters/index.json", "no 'lora'",
        {"r": registry_with(lambda d: d["adapters"][0].pop("lora"))}),
    Row("train-lora-dropout", [*TRAIN, "--train-data", "{triplets}", "--output", "{tmp}/a", "--lora-dropout", "1.5"],
        "--lora-dropout"),
    Row("train-warmup-nan", [*TRAIN, "--train-data", "{triplets}", "--output", "{tmp}/a", "--warmup-ratio", "nan"],
        "--warmup-ratio"),
    Row("train-pairs-labelled-both-ways", [*TRAIN, "--pairs", "{tmp}/p.csv", "--output", "{tmp}/a"], "{tmp}/p.csv:3",
        "the same two texts are labelled 0 here and 1 on line 2",
        {"p.csv": "sentence1,sentence2,label\nsort a list,order a list,1\nOrder a list,sort a list,0\n"}),
    Row("train-resume-bad-state", [*TRAIN, "--train-data", "{triplets}", "--output", "{tmp}/a",
                                   "--resume-from-checkpoint", "{tmp}/a"],
        "{tmp}/a/checkpoints/checkpoint-2/train_state.json", "no 'settings'", {"a": bad_checkpoint}),
    Row("train-resume-pickle", [*TRAIN, "--train-data", "{triplets}", "--output", "{tmp}/a",
                                "--resume-from-checkpoint", "{tmp}/a"],
        "{tmp}/a/checkpoints/checkpoint-2", "pickle", {"a": pickle_checkpoint}),
    # -- evaluate -----------------------------------------------------------------------
    Row("evaluate-pairs-not-utf8", [*EVAL, "--pairs", "{tmp}/p.jsonl"], "{tmp}/p.jsonl:1", "not UTF-8",
        {"p.jsonl": b'{"sentence1": "\xff"}\n'}),
    Row("evaluate-pairs-csv-unclosed-quote", [*EVAL, "--pairs", "{tmp}/p.csv"], "{tmp}/p.csv:3",
        "quote that is never closed", {"p.csv": 'sentence1,sentence2,label\na b,a b c,1\n"x y,z,0\nc,d,1\n'}),
    Row("evaluate-pairs-missing", [*EVAL, "--pairs", "{tmp}/nope.csv"], "{tmp}/nope.csv", "not found"),
    Row("evaluate-into-registry", ["evaluate", "--domain", "programming", "--adapter", "{adapter}", "--pairs",
                                   "{tmp}/p.jsonl", "--output", "{reg}/adapters/eval"], "{reg}/adapters/eval",
        "inside the adapter registry", {"p.jsonl": "".join(json.dumps({"sentence1": "a b", "sentence2": s, "label": y})
                                                         + "\n" for s, y in (("a b c", 1), ("x y", 0)))}),
    # -- adapters -----------------------------------------------------------------------
    Row("adapters-add-symlink", ["adapters", "add", "{tmp}/ad", "--registry", "{tmp}/r"], "{tmp}/ad/README.md",
        "symbolic link", {"ad": symlink_to_secret}),
    Row("adapters-add-fifo", ["adapters", "add", "{tmp}/ad", "--registry", "{tmp}/r"], "{tmp}/ad/README.md",
        "not a regular file", {"ad": fifo_readme}),
    Row("adapters-add-reserved-name", ["adapters", "add", "{adapter}", "--name", "index.json", *REG],
        "'index.json'", "reserved"),
    Row("adapters-add-nonfinite", ["adapters", "add", "{tmp}/ad", "--registry", "{tmp}/r"],
        "{tmp}/ad/adapter_model.safetensors", "NaN or infinite", {"ad": nan_weights}),
    Row("adapters-add-other-base", ["adapters", "add", "{tmp}/ad", "--registry", "{tmp}/r"],
        "{tmp}/ad/adapter_config.json", "BAAI/bge-small-en-v1.5", {"ad": other_base}),
    Row("adapters-add-missing-folder", ["adapters", "add", "{tmp}/nope", *REG], "{tmp}/nope", "not found"),
    Row("adapters-remove-path-escape", ["adapters", "remove", "programming", "--registry", "{tmp}/r"],
        "{tmp}/r/adapters/index.json", "'../../victim'",
        {"r": registry_with(lambda d: d["adapters"][0].update(path="../../victim"))}),
    Row("adapters-list-missing-field", ["adapters", "list", "--registry", "{tmp}/r"], "{tmp}/r/adapters/index.json",
        "no 'version'", {"r": registry_with(lambda d: d["adapters"][0].pop("version"))}),
    Row("adapters-add-onto-bad-index", ["adapters", "add", "{adapter}", "--registry", "{tmp}/r"],
        "{tmp}/r/adapters/index.json", "not an adapter file",
        {"r": registry_with(lambda d: d["adapters"][0]["files"].update({"../x": "0" * 64}))}),
    Row("adapters-index-not-json", ["adapters", "verify", "--registry", "{tmp}/r"], "{tmp}/r/adapters/index.json:1",
        "not valid JSON", {"r": lambda p: (p / "adapters").mkdir(parents=True) or
                           (p / "adapters" / "index.json").write_text("{oops")}),
    Row("adapters-export-into-registry", ["adapters", "export", "programming", *REG, "--output",
                                          "{reg}/adapters/copy"], "{reg}/adapters/copy", "inside the adapter registry"),
    Row("adapters-export-nonempty", ["adapters", "export", "programming", *REG, "--output", "{tmp}/out"],
        "{tmp}/out", "not empty", {"out": lambda p: p.mkdir() or (p / "keep.txt").write_text("keep")}),
    Row("adapters-show-unknown", ["adapters", "show", "nope", *REG], "{reg}/adapters/index.json",
        "no adapter named 'nope'"),
    # -- embed / similarity ---------------------------------------------------------------
    Row("similarity-empty", ["similarity", "--adapter", "programming", *REG, "", ""], "A is empty"),
    Row("calibrate-no-mode", ["calibrate", "programming", *REG], "--pairs"),
    Row("calibrate-bad-inclusion-probability", ["calibrate", "programming", *REG, "--pairs", "{tmp}/p.jsonl"],
        "{tmp}/p.jsonl:2", "'inclusion_probability': expected a probability in (0, 1], got 2",
        {"p.jsonl": PAIR.format(p=0.5) + PAIR.format(p=2)}),
    Row("calibrate-inclusion-probability-on-some", ["calibrate", "programming", *REG, "--pairs", "{tmp}/p.jsonl"],
        "{tmp}/p.jsonl", "inclusion_probability is given for 1 of 2 pairs",
        {"p.jsonl": PAIR.format(p=0.5) + '{"sentence1": "a", "sentence2": "c", "label": 0}\n'}),
    Row("calibrate-pairs-labelled-both-ways", ["calibrate", "programming", *REG, "--pairs", "{tmp}/p.jsonl"],
        "{tmp}/p.jsonl:3", "the same two texts are labelled 0 here and 1 on line 1",
        {"p.jsonl": "".join(json.dumps({"sentence1": a, "sentence2": b, "label": y}) + "\n" for a, b, y in
                            (("sort a list", "order a list", 1), ("a b", "c d", 0), ("order a list", "sort a list", 0)))}),
    Row("embed-empty-argument", ["embed", "--adapter", "programming", *REG, "sort a list", " "], "TEXT 2 is empty"),
    Row("embed-input-empty-text", ["embed", "--adapter", "programming", *REG, "--input", "{tmp}/in.jsonl"],
        "{tmp}/in.jsonl:2", "'query' is empty", {"in.jsonl": QUERY + '{"query": ""}\n'}),
    Row("embed-input-not-utf8", ["embed", "--adapter", "programming", *REG, "--input", "{tmp}/in.txt"],
        "{tmp}/in.txt:2", "not UTF-8", {"in.txt": NOT_UTF8}),
    Row("embed-would-overwrite", ["embed", "--adapter", "programming", *REG, "--output", "{tmp}/v.json", "a b"],
        "{tmp}/v.json", "--overwrite", {"v.json": "keep me"}),
    Row("embed-into-registry", ["embed", "--adapter", "programming", *REG, "--output",
                                "{reg}/adapters/index.json", "--overwrite", "a b"], "{reg}/adapters/index.json",
        "inside the adapter registry"),
    Row("similarity-nonfinite-adapter", ["similarity", "--adapter", "{tmp}/ad", "a b", "c d"],
        "{tmp}/ad/adapter_model.safetensors", "NaN or infinite", {"ad": nan_weights}),
    # -- router / --domain auto ------------------------------------------------------------
    Row("router-train-not-a-pair", ["router", "train", *REG, "--queries", "programming"], "--queries",
        "expected NAME=FILE"),
    Row("router-train-queries-not-utf8", ["router", "train", *REG, "--queries", "programming={tmp}/p.txt",
                                          "--queries", "medical={tmp}/m.txt"], "{tmp}/p.txt:2", "not UTF-8",
        {"p.txt": NOT_UTF8, "m.txt": "what is asthma\n"}),
    Row("router-train-run-without-queries", ["router", "train", *REG, "--run", "{tmp}/r1", "--run", "{tmp}/r2"],
        "{tmp}/r1", "no prepared queries"),
    Row("router-train-no-adapter", ["router", "train", *REG, "--queries", "programming={tmp}/p.txt",
                                    "--queries", "medical={tmp}/m.txt"], "{reg}/adapters/index.json",
        "no adapter for domain 'medical'", {"p.txt": "sort a list\n", "m.txt": "what is asthma\n"}),
    Row("router-train-bad-heldout", ["router", "train", *REG, "--heldout", "1.5", "--queries", "a={tmp}/p.txt"],
        "--heldout"),
    Row("router-train-bad-name", ["router", "train", *REG, "--name", "../x", "--queries", "programming={tmp}/p.txt",
                                  "--queries", "medical={tmp}/p.txt"], "--name", "bad router name",
        {"p.txt": "sort a list\n"}),
    Row("router-evaluate-invalid-json", ["router", "evaluate", *REG, "--router", "{tmp}/r.json",
                                         "--queries", "programming={tmp}/p.txt"], "{tmp}/r.json", "invalid JSON",
        {"r.json": '{"domains": [', "p.txt": "sort a list\n"}),
    Row("router-show-unknown", ["router", "show", *REG, "nope"], "{reg}/routers", "no router named 'nope'"),
    Row("embed-auto-without-router", ["embed", "--domain", "auto", *REG, "sort a list"], "{reg}/routers",
        "no router in the registry"),
    Row("serve-unknown-model", ["serve", *REG, "--port", "0", "--model", "nope"], "{reg}/adapters/index.json",
        "no adapter named 'nope'"),
    Row("serve-bad-index", ["serve", "--registry", "{tmp}/r", "--port", "0"], "{tmp}/r/adapters/index.json",
        "has ref", {"r": registry_with(lambda d: d["adapters"][0].update(ref="other@1"))}),
    # -- run ------------------------------------------------------------------------------
    Row("run-config-not-utf8", ["run", "--domain", "programming", "--config", "{tmp}/run.yaml", "--print-config"],
        "{tmp}/run.yaml:2", "not UTF-8", {"run.yaml": b"train:\n  lr: \xff\n"}),
    Row("run-config-invalid-yaml", ["run", "--domain", "programming", "--config", "{tmp}/run.yaml"],
        "{tmp}/run.yaml", "invalid YAML", {"run.yaml": "train: [1, 2\n"}),
    Row("run-unknown-key", ["run", "--domain", "programming", "--set", "train.lrr=1", "--print-config"],
        "train.lrr"),
    Row("run-workdir-in-registry", ["run", "--domain", "programming", "--workdir", "{reg}/adapters/w"],
        "{reg}/adapters/w", "inside the adapter registry"),
    # -- plugins --------------------------------------------------------------------------
    Row("plugin-commands-raise", ["hello"], "plugin 'brokencmd'", "failed in register_commands",
        plugin=broken_commands),
    Row("plugin-domain-not-a-domain", [*PREP[:1], "--domain", "toy", "--output", "{tmp}/o"], "--domain",
        "unknown domain 'toy'", plugin=domain_that_is_a_string, warning="expected a cachetune.Domain, got str"),
    Row("plugin-domains-raise", [*PREP[:1], "--domain", "toy", "--output", "{tmp}/o"], "--domain",
        "unknown domain 'toy'", plugin=raising_domains, warning="failed in register_domains: RuntimeError('boom')"),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_model):
    from cachetune.registry import AdapterRegistry

    root = tmp_path_factory.mktemp("bad-inputs")
    ADAPTER["dir"] = make_adapter(tiny_model, root / "adapter", "programming", seed=1)
    AdapterRegistry(root / "reg").add(ADAPTER["dir"])
    ADAPTER["reg"] = root / "reg"
    triplets = root / "triplets.jsonl"
    triplets.write_text(TRIPLET * 8, encoding="utf-8")
    return {"adapter": str(ADAPTER["dir"]), "tiny": tiny_model, "triplets": str(triplets)}


def snapshot(folder) -> dict:
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink() or not path.is_file():
            out[rel] = os.readlink(path) if path.is_symlink() else "<not a file>"
        else:
            out[rel] = path.read_bytes()
    return out


def test_the_table_covers_every_command():
    from cachetune.core.cli import BUILTIN_COMMANDS

    covered = {row.args[0] for row in ROWS} | {"similarity", "embed"}
    assert len(ROWS) >= 40
    assert set(BUILTIN_COMMANDS) - covered <= {"domains", "plugins", "server"}  # no input files


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_hostile_input(row, shared, tmp_path, run_cli):
    shutil.copytree(ADAPTER["reg"], tmp_path / "registry")
    where = {**shared, "tmp": str(tmp_path), "reg": str(tmp_path / "registry")}
    for name, content in row.files.items():
        path = tmp_path / name
        if callable(content):
            content(path)
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    pm = None
    if row.plugin is not None:
        pm = get_plugin_manager(load_entrypoints=False)
        made = row.plugin()
        register_module(pm, made, made.__name__)
    watched = [tmp_path, ADAPTER["dir"]]
    before = [snapshot(folder) for folder in watched]

    result = run_cli([arg.format(**where) for arg in row.args], pm=pm)

    lines = result.stderr.strip().splitlines()
    if row.warning:  # the disabled plugin, reported by name once
        assert len(lines) == 2 and lines[0].startswith("Warning: plugin '") and "disabled" in lines[0], lines
        assert row.warning in lines[0], lines[0]
        lines = lines[1:]
    assert result.exit_code != 0, result.stdout
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert row.named.format(**where) in lines[0], lines[0]
    assert row.message in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert [snapshot(folder) for folder in watched] == before, "something was written or changed"
