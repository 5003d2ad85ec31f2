"""``cachetune router train|evaluate|list|show``: the router that sends each query to its domain's adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import click

from cachetune.core.cli.adapters import registry_option
from cachetune.core.errors import CachetuneError

PREPARED_TRAIN = Path("data") / "train.jsonl"


def _pairs(values: Sequence[str], option: str) -> List[Tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"expected NAME=FILE, not '{value}'", param_hint=option)
        pairs.append((name, path))
    return pairs


def _read(path) -> List[str]:
    from cachetune.core.serving.models import read_texts

    texts = read_texts(path)
    if Path(path).suffix not in (".jsonl", ".json"):  # plain text: '#' lines are comments, as prepare reads them
        texts = [t for t in texts if not t.startswith("#")]
    if not texts:
        raise CachetuneError("no queries in the file", path)
    return texts


def _run_queries(folder) -> Tuple[str, str]:
    """(domain, train file) of a `cachetune run` / `prepare` folder."""
    folder = Path(folder)
    for candidate in (folder / PREPARED_TRAIN, folder / "train.jsonl"):
        if candidate.is_file():
            with open(candidate, encoding="utf-8") as fh:
                first = fh.readline()
            try:
                domain = json.loads(first)["domain"]
            except (ValueError, KeyError, TypeError):
                raise CachetuneError("expected prepared queries with a 'domain' field", candidate, 1) from None
            return domain, str(candidate)
    raise CachetuneError(f"no prepared queries here ({PREPARED_TRAIN} or train.jsonl)", folder)


def _collect(pairs: List[Tuple[str, str]], option: str) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for name, path in pairs:
        if name in out:
            raise click.BadParameter(f"'{name}' is given twice", param_hint=option)
        out[name] = _read(path)
    return out


def _centroid_choices(value: str) -> Tuple[int, ...]:
    try:
        choices = tuple(sorted({int(part) for part in value.split(",")}))
    except ValueError:
        choices = ()
    if not choices or choices[0] < 1:
        raise click.BadParameter(f"expected whole numbers >= 1 separated by commas, not '{value}'",
                                 param_hint="--centroids")
    return choices


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _print_report(report: dict) -> None:
    for domain, row in report["per_domain"].items():
        where = ", ".join(f"{k} {v}" for k, v in sorted(row["routed"].items()))
        click.echo(f"{domain:<14} {row['queries']:>5} queries  routed correctly {_percent(row['accuracy'])}  ({where})")
    click.echo(f"{'all':<14} {sum(r['queries'] for r in report['per_domain'].values()):>5} queries  "
               f"routed correctly {_percent(report['accuracy'])}")
    for name, row in (report.get("outside") or {}).items():
        where = ", ".join(f"{k} {v}" for k, v in sorted(row["routed"].items()))
        click.echo(f"{name:<14} {row['queries']:>5} queries  out of domain (to the base model) "
                   f"{_percent(row['to_base'])}  ({where})")


def register(cli, pm) -> None:
    @cli.group()
    def router():
        """Route each query to its domain's adapter (or the base model): train, evaluate, list, show."""

    @router.command("train")
    @registry_option
    @click.option("--queries", "queries", multiple=True, metavar="DOMAIN=FILE",
                  help="A domain's training queries: prepared .jsonl ('query'), .json, or .txt (one per line).")
    @click.option("--run", "runs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
                  help="A `cachetune run` (or prepare) folder: its data/train.jsonl, domain from the rows.")
    @click.option("--heldout", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.2,
                  show_default=True,
                  help="Share of each domain's queries held out to compare the classifiers and set thresholds.")
    @click.option("--max-rejected", type=click.FloatRange(0.0, 0.5, min_open=True, max_open=True), default=0.01,
                  show_default=True,
                  help="Share of a domain's own held-out queries its threshold may send to the base model.")
    @click.option("--base-threshold", type=click.FloatRange(-1.0, 1.0),
                  help="Cache threshold for queries of no domain (default: the strictest base-model threshold "
                       "the adapters' evaluations calibrated).")
    @click.option("--centroids", "centroids", default="1", show_default=True, metavar="K[,K...]",
                  help="Centroids per domain for the confidence check; several values: each domain's is chosen "
                       "on the held-out part (fewest own queries rejected + other domains' queries let in).")
    @click.option("--name", help="Store under this name (default: the domains joined by '+').")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--device", help="torch device (default: sentence-transformers' choice).")
    def train(registry, queries, runs, heldout, max_rejected, base_threshold, centroids, name, seed, device):
        """Train a router for the registry's adapters of the given domains and store it in the registry."""
        from cachetune.core.routing.train import train_router
        from cachetune.core.serving.models import load_multi, open_registry
        from cachetune.registry.routers import RouterStore, check_router_name

        if name is not None:
            try:
                check_router_name(name)
            except CachetuneError as exc:
                raise click.BadParameter(exc.message, param_hint="--name") from None
        choices = _centroid_choices(centroids)
        pairs = _pairs(queries, "--queries") + [_run_queries(folder) for folder in runs]
        if len(pairs) < 2:
            raise click.UsageError("give the queries of at least two domains (--queries DOMAIN=FILE or --run DIR)")
        texts = _collect(pairs, "--queries/--run")
        reg = open_registry(registry)
        multi = load_multi(sorted(texts), registry=reg, device=device)
        trained = train_router(multi, texts, heldout=heldout, seed=seed, max_rejected=max_rejected,
                               base_threshold=base_threshold, sources=dict(pairs),
                               log=lambda line: click.echo(line, err=True), centroid_choices=choices)
        trained.ref = ref = RouterStore(reg).save(trained.to_json(), name)
        held = trained.heldout
        scores = ", ".join(f"{kind} {_percent(acc)}" for kind, acc in held["classifier_accuracy"].items())
        click.echo(f"held-out domain accuracy: {scores}; kept {held['kept']}")
        click.echo("confidence thresholds (cosine to the nearest of the domain's centroids, adapter space): " +
                   ", ".join(f"{d} {t:.4f} ({len(trained.centroids[d])} centroid"
                             f"{'s' if len(trained.centroids[d]) > 1 else ''})" for d, t in trained.thresholds.items()) +
                   f"; base threshold {trained.base_threshold if trained.base_threshold is not None else 'none'}")
        _print_report(held)
        click.echo(f"router {ref} -> {RouterStore(reg).path_of(ref)}")

    @router.command("evaluate")
    @registry_option
    @click.option("--router", "router_ref", help="Router NAME[@VERSION] or file (default: the registry's only one).")
    @click.option("--queries", "queries", multiple=True, metavar="DOMAIN=FILE",
                  help="Queries that belong to DOMAIN (repeatable).")
    @click.option("--outside", "outside", multiple=True, metavar="NAME=FILE",
                  help="Queries of no routed domain (repeatable): the share sent to the base model is reported.")
    @click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
    @click.option("--device", help="torch device (default: sentence-transformers' choice).")
    def evaluate(registry, router_ref, queries, outside, as_json, device):
        """Routing accuracy on labelled queries, and the out-of-domain rate on other domains' queries."""
        from cachetune.core.serving.routed import load_routed
        from cachetune.core.routing.train import evaluate_router

        if not queries and not outside:
            raise click.UsageError("give --queries DOMAIN=FILE and/or --outside NAME=FILE")
        labelled = _collect(_pairs(queries, "--queries"), "--queries")
        others = _collect(_pairs(outside, "--outside"), "--outside")
        multi = load_routed(registry, router_ref, device=device)
        report = evaluate_router(multi.router, multi, labelled, others)
        report["router"] = multi.router.ref
        if as_json:
            click.echo(json.dumps(report, indent=2))
            return
        click.echo(f"router {multi.router.ref} ({multi.router.classifier}; "
                   f"{', '.join(f'{d} {r}' for d, r in multi.router.adapters.items())})")
        _print_report(report)

    @router.command("list")
    @registry_option
    @click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
    def list_(registry, as_json):
        """Routers in the registry (latest version of each)."""
        from cachetune.core.serving.models import open_registry
        from cachetune.core.serving.routed import read_router
        from cachetune.registry.routers import RouterStore

        reg = open_registry(registry)
        rows = [_summary(read_router(reg, name)) for name in RouterStore(reg).names()]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            click.echo("no routers (train one with `cachetune router train`)")
        for row in rows:
            click.echo(f"{row['ref']:<28} {row['classifier']:<9} held-out accuracy {_percent(row['accuracy'])}  "
                       f"{', '.join(row['adapters'].values())}")

    @router.command("show")
    @registry_option
    @click.argument("ref")
    def show(registry, ref):
        """A router's record (without its vectors): domains, adapters, held-out results, thresholds."""
        from cachetune.core.serving.models import open_registry
        from cachetune.core.serving.routed import read_router

        click.echo(json.dumps(_summary(read_router(open_registry(registry), ref)), indent=2))


def _summary(router) -> dict:
    return {"ref": router.ref, "domains": router.domains, "adapters": router.adapters,
            "base_model": router.base_model, "classifier": router.classifier,
            "accuracy": router.heldout.get("accuracy"), "heldout": router.heldout,
            "thresholds": router.thresholds, "base_threshold": router.base_threshold, "info": router.info}
