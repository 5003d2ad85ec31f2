"""The README's results: base vs adapters on each domain's human evaluation pairs, and what each
source of training signal adds on its own (an ablation), per domain and across domains.

Per domain (``--domain NAME=PREPARED``): a ``cachetune prepare`` folder (its training queries
join the pool negatives are mined from, its held-out queries never train), the data files of
the domain's training sets (``--training-source NAME:SET=FILE``; default: what the package
ships), optional LLM triplets (``--llm NAME=TRIPLETS``), and the evaluation pairs
(``--eval-pairs NAME=FILE``, JSONL pairs or RQE XML; default: the domain's evaluation sets for
that prepared folder). Training pairs touching the evaluation pairs are dropped (signal.py).

    python bench/quality.py --domain programming=runs/q/programming/data \\
        --training-source programming:conala-train=../shared/data/conala/conala-train.json \\
        --domain medical=runs/q/medical/data \\
        --training-source medical:rqe-train=../shared/data/rqe/RQE_Train_8588_AMIA2016.xml

Variants (``--variants``, default: all that apply): ``llm`` (LLM triplets only), ``human``
(the training sets, negatives mined with relative margin 0.05), ``human+llm`` (both in one file),
``inbatch`` (human pairs, in-batch negatives only: what the mined negatives add), ``margin0``
(negatives mined with no margin: the nearest candidate below the positive, what dropping
inverted triplets keeps), ``guide`` (human + the guide filter), ``symmetric`` (human +
symmetric loss), ``lora16`` (human + LoRA r=16 alpha=32 on query,key,value,dense) and
``multi`` (one adapter on every domain's human (+LLM) data, trained for ``--steps`` times the
number of domains, so it sees as many triplets of each domain as a single-domain adapter). Every adapter is evaluated on
every domain: AP and hit rate at precision 0.95 (in-sample calibration) with bootstrap 95%
intervals, their gains over the base model with paired bootstrap 95% intervals (the same
resampled pairs for base and adapter), and the hit rate the out-of-sample stored threshold
keeps on unseen pairs (``evaluate``'s calibration; a point figure). Each adapter is scored as soon
as it is trained and ``OUTPUT/quality.json`` rewritten, so a run stopped halfway keeps what it
finished; ``--table OUTPUT/quality.json ...`` prints the table of one or several runs again.
``--compare A=B`` sets two adapters side by side (their per-pair scores are kept in
quality.json): the difference in AP and hit rate with a paired bootstrap interval.
``--guide-filter`` and ``--loss`` apply to every adapter a run trains (with ``--tag`` to name them).
A rerun into the same ``--output`` reuses a finished adapter only when its card records the same
data file (name and content) and the same settings; otherwise it stops with one line naming the
difference (``--retrain`` trains it again), so one run's adapter is never scored under another's name.
``--negatives-from positives`` mines every human pair's negative again from the positives' texts only
(the side CoNaLa's evaluation negatives come from) instead of the whole query pool; its data files
are suffixed ``-sameside``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

VARIANTS = ("llm", "human", "human+llm", "inbatch", "margin0", "guide", "symmetric", "lora16", "multi")
# Training options per variant (on top of the common ones below).
OPTIONS = {"guide": {"guide_filter": True}, "symmetric": {"loss": "symmetric"}, "inbatch": {"hard_negatives": False},
           "lora16": {"lora_r": 16, "lora_alpha": 32, "target_modules": ("query", "key", "value", "dense")}}
ON_HUMAN = ("inbatch", "guide", "symmetric", "lora16")  # variants trained on the human-only file


def named(items, what):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{what}: expected NAME=VALUE, got '{item}'")
        out[key] = value
    return out


def eval_rows(pm, domain: str, prepared: Path, override):
    """The evaluation pairs, as an EvaluationSet for the training guard and as rows to score."""
    from cachetune.core.evaluate.inputs import read_pairs
    from cachetune.core.types import EvaluationContext, EvaluationSet
    from cachetune.domains.medical.evaluation import read_rqe

    if override:
        path = Path(override)
        rows = read_rqe(path) if path.suffix.lower() == ".xml" else read_pairs(path)
        return rows, [EvaluationSet(path.name, "pairs", lambda context: rows)]
    sets = pm.evaluation_sets(domain)
    rows = [r for s in sets if s.kind == "pairs" for r in s.load(EvaluationContext(domain, holdout=prepared)) or []]
    return rows, sets


def assemble(pm, domain, prepared, args, eval_sets, human: bool, llm, margin: float, out: Path, model) -> Path:
    from cachetune.core.train.signal import assemble_training_data

    if out.exists():
        return out  # assembling mines with the base model: reuse across variants and reruns
    # human variants: the sets people wrote (a shipped generation, e.g. medquad-llm, is what --llm measures)
    sets = [s for s in pm.training_sets(domain) if not s.generator] if human else []
    sources = {s.split(":", 1)[1]: f for s, f in args.sources.items() if human and s.split(":", 1)[0] == domain}
    started = time.time()
    summary = assemble_training_data(pm.get_domain(domain), out, triplets=[llm] if llm else [], training_sets=sets,
                                     set_sources=sources, data_dir=prepared, evaluation_sets=eval_sets, model=model,
                                     relative_margin=margin, seed=args.seed, log=lambda m: None)
    print(f"assembled {out.name}: {summary['triplets']} triplets {json.dumps(summary['sources'])} "
          f"in {time.time() - started:.0f} s", flush=True)
    return out


def same_side(human: Path, out: Path, model, margin: float) -> Path:
    """``--negatives-from positives``: the human file with each mined negative mined again from the
    positives' texts only (for CoNaLa the rewritten intents, the side its evaluation negatives come
    from), under the same margin, own positives and question groups excluded."""
    if out.exists():
        return out
    from cachetune.core.jsonl import iter_jsonl
    from cachetune.core.mining import HardNegativeMiner
    from cachetune.core.train.signal import NegativeExclusions, sources_file

    rows = [row for _, row in iter_jsonl(human)]
    mined = [r for r in rows if r.get("negative_source") == "mined"]
    exclusions = NegativeExclusions((r["anchor"], r["positive"], r.get("group")) for r in mined)
    miner = HardNegativeMiner(model, [r["positive"] for r in mined], relative_margin=margin)
    found = miner.mine([r["anchor"] for r in mined], [r["positive"] for r in mined], k=8)  # as measured (README)
    again = {id(r): exclusions.pick(r["anchor"], r.get("group"), candidates) for r, candidates in zip(mined, found)}
    kept = []  # the file's order; a pair no positive qualifies for (all within the margin) goes
    for r in rows:
        if id(r) not in again:
            kept.append(r)
        elif again[id(r)] is not None:
            kept.append({**r, "negative": again[id(r)]})
    summary = json.loads(sources_file(human).read_text(encoding="utf-8"))
    summary["negatives_from"] = "positives"
    summary["triplets"] = len(kept)
    sources_file(out).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    with open(out, "w", encoding="utf-8") as fh:
        for row in kept:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{out.name}: {sum(again[id(r)] not in (None, r['negative']) for r in mined)} of {len(mined)} mined "
          f"negatives mined again from the positives, {sum(v is None for v in again.values())} without one",
          flush=True)
    return out


def with_llm(human: Path, llm: Path, out: Path) -> Path:
    """The human file plus the LLM triplets: mining never looks at LLM rows, so no second mining."""
    if out.exists():
        return out
    from cachetune.core.jsonl import iter_jsonl
    from cachetune.core.train.signal import LLM_SOURCE, sources_file

    rows = [{**row, "source": row.get("source") or LLM_SOURCE} for _, row in iter_jsonl(llm)]
    summary = json.loads(sources_file(human).read_text(encoding="utf-8"))
    summary["sources"][LLM_SOURCE] = {"triplets": len(rows)}
    summary["triplets"] += len(rows)
    sources_file(out).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    with open(out, "w", encoding="utf-8") as fh:
        for line in [json.dumps(r, ensure_ascii=False) for r in rows] + human.read_text(encoding="utf-8").splitlines():
            fh.write(line + "\n")
    return out


def settings_differ(card: dict, config) -> list:
    """What the adapter in a card was trained with that ``config`` would not train with:
    its data file (path and content) and every hyperparameter a bench option sets."""
    from cachetune.core.models import sha256_file

    had = card.get("hyperparameters") or {}
    differ = [f"{key} {had.get(key)!r}, now {getattr(config, key)!r}" for key in
              ("batch_size", "lr", "seed", "max_steps", "loss", "guide_filter", "pair_loss_weight", "lora_r",
               "hard_negatives") if had.get(key, getattr(config, key)) != getattr(config, key)]
    if list(had.get("target_modules", config.target_modules)) != list(config.target_modules):
        differ.append(f"target_modules {had.get('target_modules')}, now {list(config.target_modules)}")
    data = card.get("data") or {}  # by name and content: an output folder may have been copied or moved
    if Path(data.get("path", "")).name != Path(config.train_data).name:
        differ.append(f"data {Path(data.get('path', '')).name}, now {Path(config.train_data).name}")
    elif data.get("sha256") != sha256_file(config.train_data):
        differ.append(f"{config.train_data} is not the file it was trained on")
    return differ


def train_adapter(domain: str, data: Path, output: Path, args, steps: int = 0, **options) -> dict:
    from cachetune.core.adapters import CARD_FILE
    from cachetune.core.train.config import DEFAULT_LR, TrainConfig
    from cachetune.core.train.loop import train

    options = {**({"guide_filter": True} if args.guide_filter else {}),
               **({"loss": args.loss} if args.loss else {}),
               **({"pair_loss_weight": args.pair_loss_weight} if args.pair_loss_weight else {}), **options}  # a variant's own options win
    config = TrainConfig(domain=domain, train_data=data, output=output, batch_size=args.batch_size,
                         lr=args.lr or DEFAULT_LR, min_steps=steps or args.steps, max_steps=steps or args.steps,
                         overwrite=True,
                         seed=args.seed if args.train_seed is None else args.train_seed,
                         checkpoint_every=0, threads=args.threads, **options)
    if (output / CARD_FILE).exists() and not args.retrain:  # a finished run of an earlier call
        card = json.loads((output / CARD_FILE).read_text(encoding="utf-8"))
        differ = settings_differ(card, config)
        if differ:  # reusing it would score one run's adapter under another run's name
            raise SystemExit(f"{output}: trained with other settings ({'; '.join(differ)}): "
                             "use another --output, or --retrain to train it again")
        return card
    started = time.time()
    card = train(config, domain_plugin={"name": domain, "package": "cachetune", "version": "bench"},
                 log=lambda m: None, show_progress=False)
    print(f"trained {output.name}: {card['data']['triplets']} triplets, {card['results']['steps']} steps "
          f"in {time.time() - started:.0f} s", flush=True)
    return card


def scores_of(model, rows) -> np.ndarray:
    from cachetune.core.models import encode

    texts = list(dict.fromkeys(t for r in rows for t in (r["sentence1"], r["sentence2"])))
    where = {t: i for i, t in enumerate(texts)}
    emb = encode(model, texts, batch_size=64)
    return np.array([float(emb[where[r["sentence1"]]] @ emb[where[r["sentence2"]]]) for r in rows])


def paired_bootstrap(base: np.ndarray, adapter: np.ndarray, labels: np.ndarray, n: int, seed: int) -> dict:
    """Point values and 95% intervals of AP and hit rate (P 0.95) for base, adapter and their gain."""
    from cachetune.core.evaluate.metrics import average_precision, calibrate, rank_pairs

    def stats(scores, idx):
        ranked = rank_pairs(scores[idx], labels[idx])
        return average_precision(ranked), calibrate(ranked, 0.95)["hit_rate"]

    everything = np.arange(labels.size)
    point = {"base": stats(base, everything), "adapter": stats(adapter, everything)}
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    draws = {"base": [], "adapter": [], "gain": []}
    for _ in range(n):  # stratified: the class balance precision depends on stays the set's
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        b, a = stats(base, idx), stats(adapter, idx)
        draws["base"].append(b)
        draws["adapter"].append(a)
        draws["gain"].append((a[0] - b[0], a[1] - b[1]))
    point["gain"] = (point["adapter"][0] - point["base"][0], point["adapter"][1] - point["base"][1])
    out = {}
    for key, values in draws.items():
        values = np.array(values)
        lo, hi = np.percentile(values, [2.5, 97.5], axis=0)
        out[key] = {"ap": point[key][0], "ap_ci": [lo[0], hi[0]], "hit_rate": point[key][1],
                    "hit_rate_ci": [lo[1], hi[1]]}
    for key, scores in (("base", base), ("adapter", adapter)):
        out[key]["hit_rate_oos"] = out_of_sample_hit_rate(scores, labels, seed)
    out["gain"]["hit_rate_oos"] = out["adapter"]["hit_rate_oos"] - out["base"]["hit_rate_oos"]
    return out


def out_of_sample_hit_rate(scores: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """The hit rate the stored threshold keeps on unseen pairs (``evaluate``'s out-of-sample
    calibration for precision 0.95; 0 when the data cannot support that precision)."""
    from cachetune.core.evaluate.calibration import out_of_sample_threshold

    result = out_of_sample_threshold(scores, labels, 0.95, seed=seed)
    return result["retention"]["hit_rate"] if result["threshold"] is not None else 0.0


def fmt(value, ci) -> str:
    return f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def fmt_gain(value, ci) -> str:
    """A gain with its interval; "no change" when the interval covers zero."""
    verdict = " no change" if ci[0] <= 0 <= ci[1] else ""
    return f"{value:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]{verdict}"


def print_table(results) -> None:
    """The README's table, then each AP change in percent (the cross-domain goal's unit)."""
    print("| adapter | evaluated on | AP base | AP adapter | AP gain | hit rate base | hit rate adapter | "
          "hit-rate gain | out-of-sample hit rate base -> adapter |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['evaluated_on']} ({r['pairs']} pairs) | {fmt(r['base']['ap'], r['base']['ap_ci'])} "
              f"| {fmt(r['adapter']['ap'], r['adapter']['ap_ci'])} | {fmt_gain(r['gain']['ap'], r['gain']['ap_ci'])} "
              f"| {fmt(r['base']['hit_rate'], r['base']['hit_rate_ci'])} "
              f"| {fmt(r['adapter']['hit_rate'], r['adapter']['hit_rate_ci'])} "
              f"| {fmt_gain(r['gain']['hit_rate'], r['gain']['hit_rate_ci'])} "
              f"| {r['base']['hit_rate_oos']:.3f} -> {r['adapter']['hit_rate_oos']:.3f} |")
    for r in results:
        change = (r["adapter"]["ap"] - r["base"]["ap"]) / r["base"]["ap"]
        print(f"AP change: {r['name']} on {r['evaluated_on']}: {change * 100:+.2f}%")


def compare(results, pairs, n: int, seed: int) -> None:
    """Adapter against adapter (``--compare A=B``): the difference A - B in AP and hit rate on
    each domain both were scored on, with a paired bootstrap interval (the same resampled pairs
    for both), so "within 1% of the single-domain adapter" is read against the noise."""
    for pair in pairs:
        first, sep, second = pair.partition("=")
        if not sep:
            raise SystemExit(f"--compare: expected ADAPTER_A=ADAPTER_B, got '{pair}'")
        names = list(dict.fromkeys(r["name"] for r in results))
        for name in (first, second):
            if name not in names:
                raise SystemExit(f"--compare: no adapter named '{name}' (adapters: {'; '.join(names) or 'none'})")
        scored = {}
        for r in results:
            if r["name"] in (first, second):
                if "scores" not in r:
                    raise SystemExit(f"--compare: {r['name']} has no stored scores (scored before they were kept): "
                                     "evaluate it again with --adapter")
                scored.setdefault(r["evaluated_on"], {})[r["name"]] = r
        for domain, by_name in scored.items():
            if len(by_name) < 2:
                continue
            a, b = by_name[first], by_name[second]
            labels = np.array(a["labels"])
            if a["labels"] != b["labels"]:
                raise SystemExit(f"--compare: {first} and {second} were scored on different {domain} pairs")
            stats = paired_bootstrap(np.array(b["scores"]), np.array(a["scores"]), labels, n, seed)
            print(f"{first} vs {second} on {domain} ({labels.size} pairs): AP {stats['adapter']['ap']:.4f} vs "
                  f"{stats['base']['ap']:.4f}, difference {fmt_gain(stats['gain']['ap'], stats['gain']['ap_ci'])} "
                  f"({stats['gain']['ap'] / stats['base']['ap'] * 100:+.2f}%); hit rate difference "
                  f"{fmt_gain(stats['gain']['hit_rate'], stats['gain']['hit_rate_ci'])}")
        if not any(len(v) == 2 for v in scored.values()):
            raise SystemExit(f"--compare: no domain on which both {first} and {second} were scored")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", action="append", default=[], help="NAME=PREPARED_FOLDER (repeat)")
    parser.add_argument("--training-source", action="append", default=[], help="NAME:SET=FILE")
    parser.add_argument("--llm", action="append", default=[], help="NAME=LLM_TRIPLETS.jsonl")
    parser.add_argument("--eval-pairs", action="append", default=[], help="NAME=FILE (JSONL pairs or RQE XML)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated; DOMAIN:VARIANT trains that variant for one domain only")
    parser.add_argument("--output", type=Path, default=Path("runs/quality"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per adapter (epochs as needed)")
    parser.add_argument("--lr", type=float, default=None, help="default: the trainer's measured default")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="mining, training and bootstrap seed")
    parser.add_argument("--train-seed", type=int, default=None,
                        help="training seed only (default: --seed): runs that differ by the training seed alone, "
                        "scored on the same bootstrap resamples")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every physical core)")
    parser.add_argument("--tag", default="", help="appended to each trained adapter's name in the table "
                        "(e.g. ' lr5e-4': runs of one variant with other common options)")
    parser.add_argument("--guide-filter", action="store_true", help="train every adapter with the guide filter")
    parser.add_argument("--loss", choices=("mnrl", "symmetric"), default=None,
                        help="train every adapter with this loss (default: the trainer's)")
    parser.add_argument("--pair-loss-weight", type=float, default=0.0,
                        help="train every adapter with this weight of the CoSENT pair term (default: 0, off)")
    parser.add_argument("--negatives-from", choices=("pool", "positives"), default="pool",
                        help="mine the human pairs' negatives from the whole query pool (as training does) or "
                             "again from the positives' texts only (data files suffixed -sameside)")
    parser.add_argument("--compare", action="append", default=[], metavar="A=B",
                        help="adapter A against adapter B (names as in the table): AP and hit-rate difference "
                        "with a paired bootstrap interval, on each domain both were scored on (repeatable)")
    parser.add_argument("--retrain", action="store_true", help="train adapters already in --output again")
    parser.add_argument("--adapter", action="append", default=[], metavar="LABEL=FOLDER",
                        help="also evaluate an adapter trained elsewhere, e.g. a default run's (repeatable)")
    parser.add_argument("--table", nargs="+", type=Path, metavar="QUALITY_JSON",
                        help="only print the table of earlier runs' quality.json files (several runs in one table)")
    args = parser.parse_args(argv)
    if args.table:
        rows = [row for path in args.table for row in json.loads(path.read_text(encoding="utf-8"))]
        print_table(rows)
        compare(rows, args.compare, args.bootstrap, args.seed)
        return
    if not args.domain:
        parser.error("--domain is required (or --table)")
    args.sources = named(args.training_source, "--training-source")

    from cachetune.core.adapters import load_adapter_model
    from cachetune.core.models import load_sentence_transformer
    from cachetune.core.plugin_manager import get_plugin_manager

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    pm = get_plugin_manager()
    domains = {d: Path(f) for d, f in named(args.domain, "--domain").items()}
    llm = {d: Path(f) for d, f in named(args.llm, "--llm").items()}
    overrides = named(args.eval_pairs, "--eval-pairs")
    variants = [v for v in args.variants.split(",") if v and v != "none"]
    args.output.mkdir(parents=True, exist_ok=True)
    base = load_sentence_transformer(None, device="cpu")
    evals = {d: eval_rows(pm, d, folder, overrides.get(d)) for d, folder in domains.items()}
    base_scores = {d: scores_of(base, rows) for d, (rows, _) in evals.items()}

    results = []

    def evaluated(trained_on: str, variant: str, folder: Path, tag: str = args.tag) -> None:
        """Score an adapter on every domain now, and rewrite quality.json: a long run stopped
        halfway keeps the figures of every adapter it finished."""
        model = load_adapter_model(folder, device="cpu")
        for domain, (rows, _) in evals.items():
            labels = np.array([r["label"] for r in rows])
            scores = scores_of(model, rows)
            stats = paired_bootstrap(base_scores[domain], scores, labels, args.bootstrap, args.seed)
            results.append({"name": f"{trained_on}/{variant}{tag}", "trained_on": trained_on, "variant": variant,
                            "evaluated_on": domain, "pairs": len(rows), **stats,
                            "scores": [round(float(x), 6) for x in scores], "labels": labels.tolist()})
            print(f"evaluated {trained_on}/{variant}{tag} on {domain}: AP gain "
                  f"{fmt_gain(stats['gain']['ap'], stats['gain']['ap_ci'])}", flush=True)
        (args.output / "quality.json").write_text(json.dumps(results, indent=2), encoding="utf-8")

    for label, folder in named(args.adapter, "--adapter").items():
        evaluated(label, "given", Path(folder), tag="")
    files = {}
    for domain, prepared in domains.items():
        _, guard = evals[domain]
        wanted = [v.split(":", 1)[-1] for v in variants if ":" not in v or v.startswith(f"{domain}:")]
        data = {}
        for key, human, use_llm, margin in (("human", True, False, 0.05), ("llm", False, True, 0.05),
                                            ("margin0", True, False, 0.0)):
            if (key in wanted or (key == "human" and set(wanted) & {*ON_HUMAN, "human+llm", "multi"})) \
                    and (not use_llm or domain in llm):
                data[key] = assemble(pm, domain, prepared, args, guard, human, llm.get(domain) if use_llm else None,
                                     margin, args.output / f"data-{domain}-{key}.jsonl", base)
        if args.negatives_from == "positives":  # other files, so a rerun never mixes the two kinds
            for key in [k for k in ("human", "margin0") if k in data]:
                data[key] = same_side(data[key], args.output / f"data-{domain}-{key}-sameside.jsonl", base,
                                      0.05 if key == "human" else 0.0)
        if domain in llm and {"human+llm", "multi"} & set(wanted):
            suffix = "-sameside" if args.negatives_from == "positives" else ""
            data["human+llm"] = with_llm(data["human"], llm[domain],
                                         args.output / f"data-{domain}-human+llm{suffix}.jsonl")
        files[domain] = data
        for variant in wanted:
            source = "human" if variant in ON_HUMAN else variant
            if variant == "multi" or source not in data:
                continue
            out = args.output / f"adapter-{domain}-{variant}"
            train_adapter(domain, data[source], out, args, **OPTIONS.get(variant, {}))
            evaluated(domain, variant, out)
    if "multi" in variants and len(domains) > 1:
        combined = args.output / "data-multi.jsonl"
        first = next(iter(domains))
        with open(combined, "w", encoding="utf-8") as fh:
            for domain, data in files.items():
                for line in data.get("human+llm", data.get("human")).read_text(encoding="utf-8").splitlines():
                    fh.write(json.dumps({**json.loads(line), "domain": first}, ensure_ascii=False) + "\n")
        out = args.output / "adapter-multi"
        train_adapter(first, combined, out, args, steps=args.steps * len(domains))
        evaluated("all", "multi", out)

    print_table(results)
    compare(results, args.compare, args.bootstrap, args.seed)


if __name__ == "__main__":
    main()
