"""Every `cachetune run`, `prepare` and `evaluate` command in the README's bash blocks runs to the end.

The commands are read from README.md, so the README cannot drift from what works. Each block runs in
a fresh folder, as a reader copying it would, through a shell (redirections included), with:

- `../shared/data` pointing at the real data, and the hub id `neulab/conala:mined` (no network here)
  replaced by the CoNaLa file;
- small sizes: `run` generates with the SmolLM GGUF for 3 training and 1 held-out query and
  trains one pass (no 60-step minimum) over those triplets and 16 human pairs of the domain
  (`--pairs`, so a 135M generator that leaves no triplet cannot stop it) instead of the packaged
  training sets (hundreds of pairs: minutes on 2 cores); `evaluate` scores 40 pairs;
- the lines of a block that need GPUs or a hub (vLLM, torchrun) replaced by the CPU stand-ins in
  STAND_INS, each checked to still be in the README; other commands (router, calibrate, bench)
  are left to their own tests.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
COMMANDS = ("run", "prepare", "evaluate")

# README line (its start) -> what runs here instead; the full-scale recipe's vLLM generation and
# torchrun training become a short CPU training on a few CoNaLa human pairs (written by the test).
STAND_INS = {
    "cachetune generate --domain programming --input work/data/train.jsonl --output work/triplets.jsonl": None,
    "torchrun --nproc_per_node 4 -m cachetune.core.cli train --domain programming":
        "cachetune train --domain programming --pairs pairs-programming.jsonl --output work/adapter --max-steps 2",
}


def readme_blocks() -> list:
    """The README's bash blocks, each a list of commands (continuation lines joined)."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", README, re.S):
        lines = re.sub(r"\\\n\s*", " ", body).splitlines()
        blocks.append([line.strip() for line in lines if line.strip() and not line.startswith("#")])
    return blocks


def runnable(block: list) -> list:
    """The commands of ``block`` this test runs: its run/prepare/evaluate lines and stand-ins."""
    out = []
    for line in block:
        stand_in = next((new for start, new in STAND_INS.items() if line.startswith(start)), "keep")
        if stand_in != "keep":
            if stand_in:
                out.append(stand_in)
        elif re.match(rf"cachetune ({'|'.join(COMMANDS)}) ", line):
            out.append(line)
    return out


def write_pairs(folder: Path, shared_data: Path) -> None:
    """``pairs-DOMAIN.jsonl``: 16 human positive pairs per domain (CoNaLa rewrites, RQE train)."""
    from cachetune.domains.medical.evaluation import read_rqe

    conala = json.loads((shared_data / "conala" / "conala-train.json").read_text(encoding="utf-8"))
    pairs = {"programming": [{"sentence1": r["intent"], "sentence2": r["rewritten_intent"], "label": 1}
                             for r in conala if r.get("rewritten_intent")][:16],
             "medical": [r for r in read_rqe(shared_data / "rqe" / "RQE_Train_8588_AMIA2016.xml")
                         if r["label"] == 1][:16]}
    for domain, rows in pairs.items():
        (folder / f"pairs-{domain}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def small(line: str, shared_data: Path, gguf: str) -> str:
    """``line`` with the real data paths and a small size (options go before any redirection)."""
    line = line.replace("../shared/data", str(shared_data))
    line = line.replace("neulab/conala:mined", str(shared_data / "conala" / "conala-train.json"))
    line = line.split(" #")[0].strip()
    command, redirect, target = line.partition(" > ")
    if command.startswith("cachetune run "):
        command += (f" --model {shlex.quote(gguf)} --set generate.limit=3 --set generate.holdout_limit=1"
                    " --set generate.max_tokens=96 --set train.min_steps=1 --set train.training_sets=none"
                    f" --pairs pairs-{option(command, '--domain')}.jsonl")
    elif command.startswith("cachetune evaluate "):
        command += " --limit 40"
    return command + redirect + target


def option(line: str, name: str, default=None):
    words = shlex.split(line)
    return words[words.index(name) + 1] if name in words else default


def check_outputs(line: str, folder: Path) -> None:
    """What the command must have written."""
    words = shlex.split(line)
    if words[1] == "run" and "--print-config" in words:
        target = folder / line.partition(" > ")[2].split()[0]
        assert yaml.safe_load(target.read_text(encoding="utf-8"))["domain"] == option(line, "--domain")
        return
    if words[1] == "run":
        work = folder / option(line, "--workdir", f"runs/{option(line, '--domain')}")
        stages = json.loads((work / "run.json").read_text(encoding="utf-8"))["stages"]
        last = option(line, "--stop-after", "evaluate" if "--no-register" in words else "register")
        assert list(stages)[-1] == last and all("fingerprint" in s for s in stages.values()), (line, stages)
        if last == "register":
            assert (work / "eval" / "metrics.json").exists() and stages["register"]["summary"]["ref"]
    elif words[1] == "prepare":
        out = folder / option(line, "--output")
        assert (out / "train.jsonl").stat().st_size > 0 and (out / "holdout.jsonl").stat().st_size > 0
    elif words[1] == "evaluate":
        metrics = json.loads((folder / option(line, "--output") / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["sets"] and all("adapter" in s for s in metrics["sets"].values()), metrics["sets"].keys()


def test_readme_blocks_are_found_and_stand_ins_still_match():
    lines = [line for block in readme_blocks() for line in block]
    for start in STAND_INS:
        assert any(line.startswith(start) for line in lines), f"README no longer has: {start}"
    commands = [line for block in readme_blocks() for line in runnable(block)]
    assert sum(line.startswith("cachetune run ") for line in commands) >= 5, commands
    assert sum(line.startswith("cachetune prepare ") for line in commands) >= 3, commands
    assert sum(line.startswith("cachetune evaluate ") for line in commands) >= 1, commands


@pytest.mark.slow
def test_readme_commands_run_to_the_end(tmp_path, shared_data, smollm_gguf):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "cachetune"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m cachetune.core.cli "$@"\n',
                       encoding="utf-8")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               CACHETUNE_HOME=str(tmp_path / "home"), PYTHONPATH=os.pathsep.join(
                   p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    ran = 0
    for number, block in enumerate(readme_blocks()):
        commands = runnable(block)
        if not commands:
            continue
        folder = tmp_path / f"block{number}"
        folder.mkdir()
        write_pairs(folder, shared_data)
        for line in commands:
            command = small(line, shared_data, smollm_gguf)
            result = subprocess.run(["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True)
            assert result.returncode == 0, f"README: {line}\nran: {command}\n{result.stderr[-3000:]}"
            check_outputs(command, folder)
            ran += 1
    assert ran >= 9
