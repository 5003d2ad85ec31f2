"""Encode throughput of the base model, an unmerged LoRA and the merged LoRA, in one run.

    .venv/bin/python bench/serve.py [--adapter DIR|NAME[@V]] [--n 2000] [--repeats 3]

All three encode the same N distinct real CoNaLa queries with the same batch
size, interleaved in short slices in rotated order, each slice's best round counting, so a
noisy neighbour on a shared machine slows one measurement, not the ratio. Without --adapter a
LoRA (r=8 on query/value, like `cachetune train`'s default) with random weights is built
on the real base model: throughput depends on the LoRA's shape, not its values.
Goal: merged within 2% of base (ratio >= 0.98).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "conala" / "conala-train.json"


def read_queries(path: Path, n: int) -> tuple:
    """``n`` distinct real CoNaLa queries: every intent, topped up with rewritten intents.

    The training split has 1,723 distinct intents, so the rest of 2,000 come from the
    curated rewrites of the same questions (real user-style queries too).
    """
    rows = json.loads(path.read_text(encoding="utf-8"))
    seen, texts, counts = set(), [], {}
    for field in ("intent", "rewritten_intent"):
        for row in rows:
            text = (row.get(field) or "").strip()
            if text and text not in seen and len(texts) < n:
                seen.add(text)
                texts.append(text)
                counts[field] = counts.get(field, 0) + 1
    if len(texts) < n:
        sys.exit(f"{path}: only {len(texts)} distinct queries, asked for {n}")
    return texts, counts


def random_lora(base_path: str, out: Path) -> Path:
    """A LoRA adapter folder + card on ``base_path`` whose B matrices are non-zero."""
    import torch
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import SentenceTransformer

    from cachetune.core.models import canonical_model_id, weights_sha256

    model = SentenceTransformer(base_path, device="cpu")
    peft_model = get_peft_model(model[0].auto_model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1,
                                                                target_modules=["query", "value"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02)
    peft_model.save_pretrained(str(out))
    card = {"domain": "programming", "base_model": {"id": canonical_model_id(base_path),
                                                    "weights_sha256": weights_sha256(base_path)},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "value"]}}
    (out / "cachetune.json").write_text(json.dumps(card, indent=2), encoding="utf-8")
    return out


def time_interleaved(encoders: dict, texts: list, slice_size: int, repeats: int):
    """Seconds (wall and CPU, per slice) and vectors of each ``encoders[name](texts)``.

    Interleaved in short slices (each slice: every encoder, rotated order), each slice keeping
    its best time over the rounds, so a burst of load from a neighbour lands on one slice of
    one encoder and is then discarded, instead of skewing a whole pass. CPU time is this
    process's (all its threads): far less sensitive to other processes than wall time.
    """
    import numpy as np

    slices = [texts[i:i + slice_size] for i in range(0, len(texts), slice_size)]
    names = list(encoders)
    best = {name: [float("inf")] * len(slices) for name in names}
    best_cpu = {name: [float("inf")] * len(slices) for name in names}
    vectors = {name: [None] * len(slices) for name in names}
    for round_ in range(repeats):
        for k, chunk in enumerate(slices):
            shift = (round_ + k) % len(names)
            for name in names[shift:] + names[:shift]:
                start, start_cpu = time.perf_counter(), time.process_time()
                vectors[name][k] = encoders[name](chunk)
                best[name][k] = min(best[name][k], time.perf_counter() - start)
                best_cpu[name][k] = min(best_cpu[name][k], time.process_time() - start_cpu)
    return best, best_cpu, {name: np.concatenate(vectors[name]) for name in names}


def encode_arguments(description: str, repeats: int) -> argparse.ArgumentParser:
    """The options this bench shares with bench/serve_onnx.py: the adapter, the queries, the timing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--adapter", help="Adapter folder or registry NAME[@VERSION] (default: a random LoRA).")
    parser.add_argument("--registry", help="Registry folder for --adapter NAME.")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=repeats, help="Rounds; each slice keeps its best time.")
    parser.add_argument("--slice", type=int, default=250, help="Queries per interleaved timing slice.")
    return parser


def main() -> None:
    parser = encode_arguments(__doc__.splitlines()[0], repeats=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice).")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import numpy as np
    import torch

    from cachetune.core.models import load_sentence_transformer, resolve_base_model
    from cachetune.core.serving.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    texts, counts = read_queries(args.data, args.n)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter or str(random_lora(resolve_base_model(None), Path(tmp) / "lora"))
        lora = load_model(adapter=adapter, registry=args.registry, device=args.device)
        merged = load_model(adapter=adapter, registry=args.registry, device=args.device, merged=True)
        base = load_sentence_transformer(lora.cachetune_adapter.base_model, device=args.device)
    models = {"base": base, "lora (unmerged)": lora, "merged": merged}

    for model in models.values():  # warm-up: first-call allocations are not throughput
        model.encode(texts[:args.batch_size], batch_size=args.batch_size, show_progress_bar=False)

    encoders = {name: partial(model.encode, batch_size=args.batch_size, convert_to_numpy=True,
                              show_progress_bar=False) for name, model in models.items()}
    best, best_cpu, vectors = time_interleaved(encoders, texts, args.slice, args.repeats)
    names = list(models)
    total = {name: sum(best[name]) for name in names}
    # CPU seconds this process used: far less sensitive to other processes than wall time.
    cpu = {name: sum(best_cpu[name]) for name in names}
    stacked = vectors
    agree = float(np.abs(stacked["merged"] - stacked["lora (unmerged)"]).max())
    moved = float(np.abs(stacked["merged"] - stacked["base"]).max())

    origin = " + ".join(f"{c} {f.replace('_', ' ')}s" for f, c in counts.items())
    print(f"{len(texts)} CoNaLa queries ({origin}), batch {args.batch_size}, device {args.device}, "
          f"torch threads {torch.get_num_threads()}, "
          f"slices of {args.slice}, best of {args.repeats} rounds per slice")
    print(f"adapter: {lora.cachetune_adapter.ref or adapter}")
    for name in names:
        print(f"  {name:<16} {len(texts) / total[name]:8.1f} sentences/s (wall)  ratio to base "
              f"{total['base'] / total[name]:.3f}   |  {len(texts) / cpu[name]:8.1f} sentences/CPU-s  "
              f"ratio to base {cpu['base'] / cpu[name]:.3f}")
    ratio, ratio_cpu = total["base"] / total["merged"], cpu["base"] / cpu["merged"]
    verdict = "met" if min(ratio, ratio_cpu) >= 0.98 else "NOT met"
    print(f"merged/base = {ratio:.3f} wall, {ratio_cpu:.3f} CPU (goal >= 0.98: {verdict}); "
          f"max |merged - unmerged| = {agree:.1e}; max |merged - base| = {moved:.1e}")


if __name__ == "__main__":
    main()
