"""Serving a merged adapter with ONNX fp32 and ONNX int8 vs PyTorch: sentences/s and human-pair AP, in one run.

    .venv/bin/python bench/serve_onnx.py [--adapter DIR|NAME[@V] [--registry DIR]] [--n 2000] [--threads 1,2]

(Not ``bench/onnx.py``: a script's folder comes first on sys.path, and a file named
``onnx.py`` there would hide the ``onnx`` package from onnxruntime.)

The adapter is registered in a temporary registry (without --adapter: bench/serve.py's random
LoRA, r=8 on query/value) and exported the way ``cachetune serve --backend onnx [--quantize
int8]`` does it. For each thread count, the three encode the same N distinct real CoNaLa
queries with the same batch size, interleaved in slices, each slice's best round counting
(bench/serve.py's ``time_interleaved``). Then each scores the programming domain's human pairs
(CoNaLa intent <-> its human rewrite, mined hard negatives): average precision.
Goals: int8 >= 2.5x PyTorch with AP within 0.003; fp32 vectors within 1e-4 of PyTorch.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from serve import encode_arguments, random_lora, read_queries, time_interleaved  # noqa: E402  (bench/serve.py)


def registered(args, tmp: Path):
    """(registry, record) of the adapter to serve, in a registry this run may write exports into."""
    from cachetune.core.models import resolve_base_model
    from cachetune.registry import AdapterRegistry

    if args.adapter and not Path(args.adapter).is_dir():
        source = AdapterRegistry(args.registry)
        shutil.copytree(source.resolve(args.adapter), tmp / "adapter")
        folder = tmp / "adapter"
        shutil.rmtree(folder / "onnx", ignore_errors=True)  # exported afresh below
    else:
        folder = Path(args.adapter) if args.adapter else random_lora(resolve_base_model(None), tmp / "lora")
    registry = AdapterRegistry(tmp / "registry")
    return registry, registry.add(folder, name="bench")


def pair_ap(encode, rows) -> float:
    import numpy as np

    from cachetune.core.evaluate.metrics import average_precision, rank_pairs

    texts = list(dict.fromkeys([r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]))
    index = {t: i for i, t in enumerate(texts)}
    vectors = encode(texts)
    scores = np.array([float(vectors[index[r["sentence1"]]] @ vectors[index[r["sentence2"]]]) for r in rows])
    return average_precision(rank_pairs(scores, [r["label"] for r in rows]))


def main() -> None:
    parser = encode_arguments(__doc__.splitlines()[0], repeats=2)
    parser.add_argument("--threads", default="1,2", help="Comma-separated thread counts to measure.")
    args = parser.parse_args()

    import numpy as np
    import torch

    from cachetune.core.serving import onnx
    from cachetune.core.serving.models import load_model
    from cachetune.core.types import EvaluationContext
    from cachetune.domains.programming.evaluation import load_conala_pairs

    texts, counts = read_queries(args.data, args.n)
    rows = load_conala_pairs(EvaluationContext(domain="programming", source=str(args.data)))
    with tempfile.TemporaryDirectory() as tmp:
        registry, record = registered(args, Path(tmp))
        pytorch = load_model(adapter=record["ref"], registry=registry, merged=True, device="cpu")
        exports = {name: onnx.adapter_export(registry, record, quantize)
                   for name, quantize in (("onnx fp32", None), ("onnx int8", "int8"))}
        sizes = {name: (folder / onnx.MODEL_FILE).stat().st_size / 1e6 for name, folder in exports.items()}
        results = {}
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            models = {"pytorch": pytorch, **{name: onnx.load_onnx(folder, threads=threads)
                                              for name, folder in exports.items()}}
            encoders = {name: partial(model.encode, batch_size=args.batch_size, convert_to_numpy=True,
                                      normalize_embeddings=True, show_progress_bar=False)
                        for name, model in models.items()}
            for encode in encoders.values():  # warm-up: first-call allocations are not throughput
                encode(texts[:args.batch_size])
            best, best_cpu, vectors = time_interleaved(encoders, texts, args.slice, args.repeats)
            results[threads] = ({n: sum(v) for n, v in best.items()}, {n: sum(v) for n, v in best_cpu.items()})
        aps = {name: pair_ap(encode, rows) for name, encode in encoders.items()}

    origin = " + ".join(f"{c} {f.replace('_', ' ')}s" for f, c in counts.items())
    positives = sum(r["label"] for r in rows)
    print(f"{len(texts)} CoNaLa queries ({origin}), batch {args.batch_size}, slices of {args.slice}, "
          f"best of {args.repeats} rounds per slice; adapter {args.adapter or 'random LoRA r=8 (bench/serve.py)'}")
    for threads, (wall, cpu) in results.items():
        print(f"{threads} thread(s):")
        for name in wall:
            print(f"  {name:<10} {len(texts) / wall[name]:8.1f} sentences/s (wall) x{wall['pytorch'] / wall[name]:.2f}"
                  f"  |  {len(texts) / cpu[name]:8.1f} sentences/CPU-s x{cpu['pytorch'] / cpu[name]:.2f}")
    fp32_diff = float(np.abs(vectors["onnx fp32"] - vectors["pytorch"]).max())
    int8_cos = (vectors["onnx int8"] * vectors["pytorch"]).sum(axis=1)
    print(f"human pairs ({len(rows)}: {positives} rewrites, {len(rows) - positives} hard negatives), AP: "
          + ", ".join(f"{name} {ap:.4f}" for name, ap in aps.items()))
    print(f"model file: " + ", ".join(f"{name} {mb:.1f} MB" for name, mb in sizes.items()))
    print(f"max |fp32 - pytorch| = {fp32_diff:.1e} (goal < 1e-4: {'met' if fp32_diff < 1e-4 else 'NOT met'}); "
          f"int8 cosine to pytorch: mean {int8_cos.mean():.4f}, min {int8_cos.min():.4f}")
    for threads, (wall, cpu) in results.items():
        speedup = min(wall["pytorch"] / wall["onnx int8"], cpu["pytorch"] / cpu["onnx int8"])
        ap_gap = abs(aps["onnx int8"] - aps["pytorch"])
        verdict = "met" if speedup >= 2.5 and ap_gap <= 0.003 else "NOT met"
        print(f"{threads} thread(s): int8 x{speedup:.2f} PyTorch (lower of wall and CPU), AP gap {ap_gap:.4f} "
              f"(goal >= 2.5x and <= 0.003: {verdict})")


if __name__ == "__main__":
    main()
