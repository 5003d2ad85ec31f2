"""Training throughput: ``cachetune train`` vs plain sentence-transformers, in one run.

Same base model, LoRA (r=8, alpha=16, query/value), loss (MultipleNegativesRankingLoss,
scale 20, hard negatives as a third column), AdamW + linear schedule + clipping 0.5,
batch size and number of steps, on real CoNaLa-derived triplets. Measured after a
warm-up step each (lazy imports and allocator warm-up are not training speed), in wall time
and in this process's CPU time (steadier when other jobs share the machine):

- ``cachetune``: ``cachetune train`` (through its CLI entry point): runs of 1 and 1 + N steps,
  whose difference is N steps of its loop;
- ``plain-128``: a plain sentence-transformers loop: random batches, every column padded to
  128 tokens, ``loss(features, labels)`` as the upstream examples write it;
- ``trainer`` (``--trainer``): ``SentenceTransformerTrainer`` with the no-duplicates sampler
  and its collator's per-batch padding.

Every method trains on the same rows (``cachetune train --keep-inverted``). ``--margin`` also
scores each method's model after its 1 + N steps on the held-out triplets (CoNaLa questions kept
out of training): the mean of cos(anchor, positive) - cos(anchor, negative), with a 95% bootstrap
interval over held-out triplets, and the paired interval of cachetune's margin minus the
trainer's, so the speed ratio is read at equal held-out margin (or not).

    .venv/bin/python bench/train.py                       # batch 128, 3 timed steps
    .venv/bin/python bench/train.py --batch-size 64 --steps 4 --trainer --threads 1
    .venv/bin/python bench/train.py --batch-size 64 --steps 24 --trainer --margin --no-plain --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def lora_model(base, seed):
    import torch

    from cachetune.core.models import load_sentence_transformer
    from cachetune.core.train.config import TrainConfig
    from cachetune.core.train.loop import build_lora_model

    torch.manual_seed(seed)
    model = load_sentence_transformer(base, device="cpu")
    model.max_seq_length = 128
    build_lora_model(model, TrainConfig("bench", "-", "-"))
    model.train()
    return model


def optimizer_for(model, lr, total):
    import torch

    from cachetune.core.train.loop import _linear_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    return params, opt, torch.optim.lr_scheduler.LambdaLR(opt, _linear_warmup(max(1, total // 10), total))


def margins(model, rows) -> "np.ndarray":
    """cos(anchor, positive) - cos(anchor, negative) of ``model`` for each held-out row."""
    import numpy as np

    from cachetune.core.models import encode

    columns = [encode(model, [r[c] for r in rows]) for c in ("anchor", "positive", "negative")]
    return np.einsum("ij,ij->i", columns[0], columns[1]) - np.einsum("ij,ij->i", columns[0], columns[2])


def interval(values, resamples: int = 2000, seed: int = 0) -> tuple:
    """The mean of ``values`` and its 95% bootstrap interval."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    means = values[np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def plain_loop(rows, base, batch_size, steps, lr, seed):
    """(wall, CPU-time) triplets/s of a plain loop with fixed padding to 128; step 0 is a warm-up."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = lora_model(base, seed)
    loss_fn = MultipleNegativesRankingLoss(model, scale=20.0)
    params, opt, sched = optimizer_for(model, lr, steps + 1)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    wall = cpu = 0.0
    done = 0
    for step in range(steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        batch = [rows[i] for i in order[step * batch_size:(step + 1) * batch_size]]
        features = []
        for column in ("anchor", "positive", "negative"):
            f = dict(model.tokenizer([r[column] for r in batch], padding="max_length", truncation=True,
                                     max_length=128, return_tensors="pt"))
            f["modality"] = "text"
            features.append(f)
        loss = loss_fn(features, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step >= 1:
            wall += time.perf_counter() - t0
            cpu += time.process_time() - c0
            done += len(batch)
    return done / wall, done / cpu


def cachetune_train(data: Path, base, batch_size, steps, lr, seed, work: Path, threads: int, extra=(), heldout=None):
    """(wall, CPU-time) triplets/s of ``cachetune train [extra]``: runs of 1 and 1 + ``steps`` steps
    (after a warm-up run); their difference is ``steps`` steps of training, without loading or saving.
    Third: the 1 + ``steps`` adapter's margins on the ``heldout`` rows (None without them)."""
    from cachetune.core.cli import main

    def run(out, n):
        args = ["train", "--domain", "programming", "--train-data", str(data), "--output", str(out),
                "--batch-size", str(batch_size), "--lr", str(lr), "--seed", str(seed), "--max-steps", str(n),
                "--checkpoint-every", "0", "--overwrite", "--quiet", "--threads", str(threads), "--keep-inverted",
                *extra]
        if base:
            args += ["--base-model", base]
        c0 = time.process_time()
        if main(args) != 0:
            raise SystemExit("cachetune train failed")
        cpu = time.process_time() - c0
        res = json.loads((out / "cachetune.json").read_text())["results"]
        return res["wall_time_s"], cpu, res["triplets_seen"]

    run(work / "warmup", 1)
    wall1, cpu1, rows1 = run(work / "one", 1)
    wall2, cpu2, rows2 = run(work / "timed", steps + 1)
    rows = rows2 - rows1
    scored = None
    if heldout is not None:
        from cachetune.core.adapters import load_adapter_model

        scored = margins(load_adapter_model(work / "timed", base, device="cpu"), heldout)
    return rows / (wall2 - wall1), rows / (cpu2 - cpu1), scored


def trainer_loop(rows, base, batch_size, steps, lr, seed, work: Path, heldout=None):
    """(wall, CPU-time) triplets/s of SentenceTransformerTrainer: runs of 1 and 1 + ``steps`` steps;
    third: the 1 + ``steps`` model's margins on the ``heldout`` rows (None without them)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    dataset = Dataset.from_dict({c: [r[c] for r in rows] for c in ("anchor", "positive", "negative")})
    measured = []
    for n in (1, steps + 1):
        model = lora_model(base, seed)
        args = SentenceTransformerTrainingArguments(
            output_dir=str(work / f"trainer-{n}"), per_device_train_batch_size=batch_size, max_steps=n,
            learning_rate=lr, warmup_steps=0.1, lr_scheduler_type="linear", max_grad_norm=0.5, weight_decay=0.01,
            batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", report_to="none", logging_steps=1000,
            seed=seed, dataloader_num_workers=0, disable_tqdm=True)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                             loss=MultipleNegativesRankingLoss(model, scale=20.0))
        c0 = time.process_time()
        out = trainer.train()
        measured.append((out.metrics["train_runtime"], time.process_time() - c0))
    done = steps * batch_size
    return (done / (measured[1][0] - measured[0][0]), done / (measured[1][1] - measured[0][1]),
            None if heldout is None else margins(model, heldout))


def read_rows(path: Path) -> list:
    if not path.exists():
        raise SystemExit(f"{path}: no such file")
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="Triplets JSONL (default: CoNaLa-derived, built on first use)")
    parser.add_argument("--source", default=str(REPO.parent / "shared/data/conala/conala-train.json"))
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="Timed steps per method.")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trainer", action="store_true", help="Also time SentenceTransformerTrainer.")
    parser.add_argument("--variants", action="store_true",
                        help="Also time cachetune train with bf16 autocast (--precision bf16) and with one "
                             "forward per step (--tokens-per-forward 0).")
    parser.add_argument("--no-plain", action="store_true",
                        help="Skip the plain loop padded to 128 (slow: about a tenth of cachetune's speed).")
    parser.add_argument("--margin", action="store_true",
                        help="Also score cachetune's and the trainer's models on the held-out triplets.")
    parser.add_argument("--eval-data", default=None,
                        help="Held-out triplets JSONL for --margin (default: beside the built training data)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="Torch threads for every method (default: physical cores). On a machine shared "
                             "with other jobs, 1 thread avoids stalls at every parallel operation's barrier.")
    args = parser.parse_args()

    import torch

    work = Path(args.workdir or tempfile.mkdtemp(prefix="cachetune-bench-train-"))
    data = Path(args.data) if args.data else work / "data" / "train_triplets.jsonl"
    if not data.exists():
        from cachetune.domains.programming.training_pairs import conala_triplet_files

        data = conala_triplet_files(args.source, work / "data", base_model=args.base_model)["paths"]["train"]
    rows = read_rows(data)
    heldout = None
    if args.margin:
        heldout = [r for r in read_rows(Path(args.eval_data) if args.eval_data else data.parent /
                                        "holdout_triplets.jsonl") if r.get("negative")]
    needed = (args.steps + 1) * args.batch_size
    if len(rows) < needed:
        raise SystemExit(f"{data} has {len(rows)} triplets; {needed} needed for {args.steps}+1 steps")

    from cachetune.core.train.runtime import physical_cores

    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    print(f"{len(rows)} triplets from {data}; batch {args.batch_size}, {args.steps} timed steps, "
          f"{torch.get_num_threads()} threads", flush=True)
    results, scored = {}, {}  # method: (wall, CPU-time) triplets/s; method: held-out margins
    if heldout is not None:
        from cachetune.core.models import load_sentence_transformer

        scored["base model"] = margins(load_sentence_transformer(args.base_model, device="cpu"), heldout)
    *results["cachetune"], scored["cachetune"] = cachetune_train(
        data, args.base_model, args.batch_size, args.steps, args.lr, args.seed, work, threads, heldout=heldout)
    if args.variants:
        for key, extra in (("bf16", ["--precision", "bf16"]), ("one-forward", ["--tokens-per-forward", "0"])):
            results[key] = cachetune_train(data, args.base_model, args.batch_size, args.steps, args.lr, args.seed,
                                           work, threads, extra)[:2]
    torch.set_num_threads(threads)
    if not args.no_plain:
        results["plain-128"] = plain_loop(rows, args.base_model, args.batch_size, args.steps, args.lr, args.seed)
    if args.trainer:
        *results["trainer"], scored["trainer"] = trainer_loop(rows, args.base_model, args.batch_size, args.steps,
                                                              args.lr, args.seed, work, heldout=heldout)
    names = {"cachetune": "cachetune train", "plain-128": "plain ST loop, padded to 128",
             "trainer": "SentenceTransformerTrainer", "bf16": "cachetune train --precision bf16",
             "one-forward": "cachetune train --tokens-per-forward 0"}
    print("\n| method | triplets/s (wall) | triplets/s (CPU time) |\n| --- | ---: | ---: |")
    for key, (wall, cpu) in results.items():
        print(f"| {names[key]} | {wall:.1f} | {cpu:.1f} |")
    ours = results["cachetune"]
    for key in ("plain-128", "trainer", "bf16", "one-forward"):
        if key in results:
            print(f"ratio cachetune / {key}: {ours[0] / results[key][0]:.2f}x wall, "
                  f"{ours[1] / results[key][1]:.2f}x CPU time" + (" (goal >= 2x)" if key == "plain-128" else ""))
    print("(CPU time counts only this process's own compute, so it is steadier than wall time on a shared machine)")
    if heldout is not None:
        print(f"held-out margin after 1 + {args.steps} steps ({len(heldout)} triplets), mean [95% bootstrap]:")
        for key, values in scored.items():
            if values is not None:
                mean, low, high = interval(values)
                print(f"  {names.get(key, key)}: {mean:+.4f} [{low:+.4f}, {high:+.4f}]")
        if scored.get("trainer") is not None:
            mean, low, high = interval(scored["cachetune"] - scored["trainer"])
            print(f"  cachetune - trainer (paired): {mean:+.4f} [{low:+.4f}, {high:+.4f}]")
    print(f"load average {os.getloadavg()[0]:.2f}")

if __name__ == "__main__":
    main()
