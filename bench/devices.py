"""Training speed on each device and precision this machine has, measured in one run.

``cachetune train`` (its CLI, one subprocess per run) trains the same triplets with the same batch
size on: the CPU in fp32 (CUDA hidden from it), and, where a GPU is visible, the GPU in fp32 and in
bf16 autocast. Each configuration runs twice, ``--warmup`` steps and ``--warmup`` + N steps, and
its speed is N steps over the difference of the two training loops' times (from the adapter
cards), so model loading, tokenisation and the first steps' allocator and kernel warm-up are not
counted. Prints triplets/s per configuration and its ratio to the CPU's (``--no-cpu``: to the GPU's fp32).

    python bench/devices.py --train-data runs/q/data-medical-human+llm.jsonl --domain medical
    python bench/devices.py --train-data T.jsonl --domain medical --batch-size 128 --gpu-steps 100 --cpu-steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run_train(args, device: str, precision: str, steps: int, out: Path) -> dict:
    """One ``cachetune train`` run; its adapter card."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = [sys.executable, "-m", "cachetune.core.cli", "train", "--domain", args.domain,
               "--train-data", str(args.train_data), "--output", str(out), "--batch-size", str(args.batch_size),
               "--max-steps", str(steps), "--min-steps", str(steps), "--precision", precision,
               "--keep-inverted", "--checkpoint-every", "0", "--overwrite", "--quiet", "--seed", str(args.seed)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.base_model:
        command += ["--base-model", args.base_model]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"{device} {precision}: cachetune train failed: {tail}")
    return json.loads((out / "cachetune.json").read_text(encoding="utf-8"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-data", type=Path, required=True, help="triplets JSONL")
    parser.add_argument("--domain", required=True)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3, help="steps run and not timed")
    parser.add_argument("--gpu-steps", type=int, default=100)
    parser.add_argument("--cpu-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-model", default=None, help="hub id or folder (default: the embedded model)")
    parser.add_argument("--no-cpu", action="store_true", help="GPU configurations only (ratios then to GPU fp32)")
    parser.add_argument("--output", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    if not args.train_data.is_file():
        raise SystemExit(f"--train-data: no such file: {args.train_data}")

    import torch

    configs = [] if args.no_cpu else [("cpu", "fp32", args.cpu_steps)]
    if torch.cuda.is_available():
        configs += [("cuda", "fp32", args.gpu_steps), ("cuda", "bf16", args.gpu_steps)]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for device, precision, steps in configs:
            short = run_train(args, device, precision, args.warmup, Path(tmp) / f"{device}-{precision}-a")
            long = run_train(args, device, precision, args.warmup + steps, Path(tmp) / f"{device}-{precision}-b")
            seconds = long["results"]["wall_time_s"] - short["results"]["wall_time_s"]
            rate = steps * args.batch_size / seconds if seconds > 0 else float("nan")
            rows.append({"device": device, "precision": long["hyperparameters"]["precision"], "steps": steps,
                         "seconds": round(seconds, 3), "triplets_per_s": round(rate, 1),
                         "final_loss": long["results"]["final_loss"]})
            print(f"{device} {precision}: {steps} steps of {args.batch_size} in {seconds:.2f} s, "
                  f"{rate:.1f} triplets/s", flush=True)
    if not rows:
        raise SystemExit("--no-cpu: no GPU is visible")
    reference = f"{rows[0]['device'].upper()} {rows[0]['precision']}"
    reference_rate = rows[0]["triplets_per_s"]
    print(f"\ntraining speed, batch {args.batch_size}, {args.train_data.name}, base {args.base_model or 'embedded'}; "
          f"GPU: {gpu or 'none'}; CPU threads: {args.threads or 'physical cores'}")
    print(f"| device | precision | timed steps | triplets/s | vs {reference} |")
    print("|---|---|---|---|---|")
    for row in rows:
        row["vs_reference"] = round(row["triplets_per_s"] / reference_rate, 2)
        print(f"| {row['device']} | {row['precision']} | {row['steps']} | {row['triplets_per_s']:.1f} | "
              f"{row['vs_reference']:.2f}x |")
    if args.output:
        args.output.write_text(json.dumps({"gpu": gpu, "batch_size": args.batch_size, "reference": reference, "rows": rows}, indent=2),
                               encoding="utf-8")


if __name__ == "__main__":
    main()
