"""What routing costs: a mixed batch encoded with ``domain="auto"`` vs the same batch with one known adapter.

    .venv/bin/python bench/route.py --registry REG --queries programming=FILE --queries medical=FILE
                                    [--n 1000] [--repeats 3] [--threads 1]

REG holds the adapters and a router (`cachetune router train`); each FILE is a domain's queries
(prepared .jsonl or .txt; held-out ones are fairest). The batch interleaves the domains' queries.
Both ways run on the same loaded model, in slices of ``--slice`` texts, alternating which goes first,
each slice's best of ``--repeats`` rounds counting, so a noisy neighbour slows one measurement, not
the ratio. Also timed alone: the routing decision (token-embedding means + the linear rule).
Goal: routed / known <= 1.10.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def mixed_batch(files: dict, n: int) -> list:
    from cachetune.core.cli.router import _read

    lists = [_read(path) for path in files.values()]
    texts, i = [], 0
    while len(texts) < n and any(i < len(items) for items in lists):
        texts.extend(items[i] for items in lists if i < len(items))
        i += 1
    return texts[:n]


def best_of(func, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--queries", action="append", required=True, metavar="DOMAIN=FILE")
    parser.add_argument("--router", help="router NAME[@VERSION] (default: the registry's only one)")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--slice", type=int, default=128, help="texts per timed slice")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least noise)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    import torch

    from cachetune.core.serving.routed import load_routed
    from cachetune.core.routing.router import token_embedding_means

    torch.set_num_threads(args.threads)
    if any("=" not in item for item in args.queries):
        parser.error("--queries takes DOMAIN=FILE")
    files = dict(item.split("=", 1) for item in args.queries)
    texts = mixed_batch(files, args.n)
    multi = load_routed(args.registry, args.router, device="cpu")
    router = multi.router
    known = router.domains[0]
    options = dict(batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=True,
                   show_progress_bar=False)
    slices = [texts[i:i + args.slice] for i in range(0, len(texts), args.slice)]
    multi.encode(slices[0], domain="auto", **options)  # warm-up: first-call allocations
    routed_s = known_s = decide_s = 0.0
    domains = []
    for k, part in enumerate(slices):
        runs = [("routed", lambda: multi.encode(part, domain="auto", **options)),
                ("known", lambda: multi.encode(part, domain=known, **options))]
        for name, func in (runs if k % 2 == 0 else runs[::-1]):
            elapsed = best_of(func, args.repeats)
            if name == "routed":
                routed_s += elapsed
            else:
                known_s += elapsed
        decide_s += best_of(lambda: router.choose(token_embedding_means(multi.model, part)), args.repeats)
        domains += multi.encode(part, domain="auto", **options).domains
    counts = Counter(name or "base" for name in domains)
    ratio = routed_s / known_s
    print(f"{len(texts)} texts ({', '.join(f'{d} {n}' for d, n in sorted(counts.items()))} as routed), "
          f"batch size {args.batch_size}, {args.threads} torch thread(s), router {router.ref} ({router.classifier})")
    print(f"known adapter ({known}): {known_s:.2f} s ({len(texts) / known_s:.1f} texts/s)")
    print(f"routed (auto):          {routed_s:.2f} s ({len(texts) / routed_s:.1f} texts/s)")
    print(f"routing decision alone: {decide_s:.3f} s ({100 * decide_s / known_s:.1f}% of the known encode)")
    print(f"routed / known = {ratio:.3f}  (goal <= 1.10: {'met' if ratio <= 1.10 else 'missed'})")


if __name__ == "__main__":
    main()
