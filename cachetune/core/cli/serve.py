"""``cachetune embed`` and ``cachetune similarity``: try an adapter by hand.

``similarity`` is the cache decision itself: the cosine of two queries under the domain's
adapter, compared with the threshold calibrated when the adapter was evaluated.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click

from cachetune.core.cli import DomainChoice
from cachetune.core.cli.adapters import registry_option
from cachetune.core.errors import CachetuneError

AUTO = "auto"  # the routed "domain" (cachetune.core.routing.router.AUTO; not imported: that loads numpy)


class DomainOrAuto(DomainChoice):
    """``--domain``: a registered domain, or ``auto`` (the registry's router picks one per text)."""

    def get_metavar(self, param, *args, **kwargs) -> str:
        return super().get_metavar(param, *args, **kwargs).replace("]", f"|{AUTO}]")

    def convert(self, value, param, ctx):
        return value if value == AUTO else super().convert(value, param, ctx)


def routed_domain_options(pm):
    def decorate(func):
        func = click.option("--router", "router", metavar="NAME[@VERSION]",
                            help="With --domain auto: this router (default: the registry's only one).")(func)
        return click.option("--domain", "domain", type=DomainOrAuto(pm),
                            help="Domain to encode for, or 'auto' to route each text to its domain "
                                 "(`cachetune router train`).")(func)
    return decorate


def adapter_option(func):
    return click.option(
        "--adapter",
        help="Registry NAME[@VERSION], an adapter folder, or a merged export (default: the domain's adapter).",
    )(func)


def backend_options(func):
    """``--backend torch|onnx`` and ``--quantize int8`` (shared with ``cachetune serve``)."""
    func = click.option("--quantize", type=click.Choice(["int8"]),
                        help="With --backend onnx: the int8 export (faster; see the README for its accuracy).")(func)
    return click.option("--backend", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
                        help="onnx: the adapter merged and run by onnxruntime (exported on first use, cached in "
                             "the registry; needs pip install 'cachetune[onnx]').")(func)


def _load(domain, adapter, registry, merged=False, device=None, router=None, backend="torch", quantize=None):
    if not domain and not adapter:
        raise click.UsageError("give --domain or --adapter")
    if router and domain != AUTO:
        raise click.UsageError("--router goes with --domain auto")
    if quantize and backend != "onnx":
        raise click.UsageError("--quantize needs --backend onnx")
    if domain == AUTO:
        if adapter or merged:
            raise click.UsageError("--domain auto picks the adapters itself: drop --adapter/--merged")
        if backend != "torch":
            raise click.UsageError("--domain auto needs --backend torch (the router reads token embeddings)")
        from cachetune.core.serving.routed import load_routed

        return load_routed(registry, router, device=device)
    from cachetune.core.serving.models import load_model

    return load_model(domain=domain, registry=registry, merged=merged, adapter=adapter, device=device,
                      backend=backend, quantize=quantize)


def _label(served) -> str:
    return served.ref or served.path


def register(cli, pm) -> None:
    @cli.command()
    @routed_domain_options(pm)
    @adapter_option
    @registry_option
    @click.option("--input", "input_path", help="Texts to embed: .txt (one per line), .jsonl/.json "
                                                "('query' or 'text' fields), or - for standard input.")
    @click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
                  help="Write FILE.json, FILE.jsonl or FILE.npy instead of JSON lines on standard output.")
    @click.option("--overwrite", is_flag=True, help="Replace --output if it exists.")
    @click.option("--merged", is_flag=True, help="Merge the LoRA into the weights first (same vectors, faster).")
    @click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
    @backend_options
    @click.option("--device", help="torch device (default: sentence-transformers' choice).")
    @click.argument("texts", nargs=-1)
    def embed(domain, router, adapter, registry, input_path, output, overwrite, merged, batch_size, backend, quantize,
              device, texts):
        """Embed TEXT... (or --input FILE) with a domain's adapter (--domain auto: each text's domain)."""
        from cachetune.core.serving import models as serving

        if texts and input_path:
            raise click.UsageError("give texts as arguments or --input, not both")
        if not texts and not input_path:
            raise click.UsageError("give texts to embed, or --input FILE")
        if output is not None:
            serving.check_output_path(output, overwrite)  # fail before the model loads
        serving.check_not_empty((f"TEXT {i}", text) for i, text in enumerate(texts, 1))
        texts = list(texts) if texts else serving.read_texts(input_path)
        if not texts:
            raise CachetuneError("no texts to embed", input_path)
        model = _load(domain, adapter, registry, merged=merged, device=device, router=router, backend=backend,
                      quantize=quantize)
        options = dict(batch_size=batch_size, convert_to_numpy=True, show_progress_bar=len(texts) > 4 * batch_size)
        if domain == AUTO:
            routed = model.encode(texts, domain=AUTO, **options)
            vectors, domains, label = routed.embeddings, routed.domains, f"router {model.router.ref}"
            served = None
        else:
            vectors, domains = model.encode(texts, **options), None
            served = model.cachetune_adapter
            label = _label(served)
        if output is None:
            for line in serving.iter_embedding_lines(texts, vectors, domains):
                click.echo(line)
            return
        serving.write_embeddings(output, texts, vectors, served, domains)
        click.echo(f"{len(texts)} embeddings of dimension {vectors.shape[1]} ({label}) -> {output}", err=True)
        if domains is not None:
            counts = Counter(name or "base" for name in domains)
            click.echo("routed: " + ", ".join(f"{name} {n}" for name, n in sorted(counts.items())), err=True)

    @cli.command()
    @routed_domain_options(pm)
    @adapter_option
    @registry_option
    @click.option("--threshold", type=click.FloatRange(-1.0, 1.0),
                  help="Decide with this threshold instead of the calibrated one.")
    @click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
    @backend_options
    @click.option("--device", help="torch device (default: sentence-transformers' choice).")
    @click.argument("a")
    @click.argument("b")
    def similarity(domain, router, adapter, registry, threshold, as_json, backend, quantize, device, a, b):
        """Cosine of A and B under the adapter, and whether a cache would treat them as the same query."""
        from cachetune.core.serving.models import check_not_empty, cosine

        check_not_empty([("A", a), ("B", b)])  # before the model loads
        model = _load(domain, adapter, registry, device=device, router=router, backend=backend, quantize=quantize)
        if domain == AUTO:
            _routed_similarity(model, a, b, threshold, as_json)
            return
        served = model.cachetune_adapter
        score = cosine(model, a, b)
        source = "--threshold" if threshold is not None else "calibrated"
        if threshold is None:
            threshold = served.calibrated_threshold
        hit = None if threshold is None else score >= threshold
        if as_json:
            click.echo(json.dumps({"adapter": _label(served), "domain": served.domain, "cosine": score,
                                   "threshold": threshold, "threshold_source": source if threshold is not None
                                   else None, "hit": hit}))
            return
        click.echo(f"cosine     {score:.4f}  ({_label(served)})")
        if threshold is None:
            click.echo("threshold  none: this adapter has no calibrated threshold yet "
                       "(run `cachetune evaluate --register-metrics`, or pass --threshold)")
            return
        click.echo(f"threshold  {threshold:.4f}  ({source})")
        if hit:
            click.echo("decision   HIT: same query for the cache; the cached answer would be reused")
        else:
            click.echo("decision   MISS: different queries; the cache would call the model")


def _routed_similarity(multi, a: str, b: str, threshold, as_json: bool) -> None:
    result = multi.similarity(a, b, domain=AUTO)
    source = "--threshold" if threshold is not None else "calibrated"
    if threshold is None:
        threshold = result.threshold
    same = result.same_domain
    hit = False if not same else (None if threshold is None else result.cosine >= threshold)
    names = [d or "base" for d in result.domains]
    if as_json:
        click.echo(json.dumps({"router": multi.router.ref, "domains": list(result.domains), "cosine": result.cosine,
                               "threshold": threshold, "threshold_source": source if threshold is not None else None,
                               "hit": hit}))
        return
    click.echo(f"domains    {names[0]} / {names[1]}  (router {multi.router.ref})")
    click.echo(f"cosine     {result.cosine:.4f}  (in {names[0]}'s space)")
    if not same:
        click.echo("decision   MISS: the texts belong to different domains; a cache kept apart by domain "
                   "never compares them")
        return
    if threshold is None:
        click.echo(f"threshold  none: {names[0]} has no calibrated threshold yet (pass --threshold)")
        return
    click.echo(f"threshold  {threshold:.4f}  ({source})")
    click.echo("decision   HIT: same query for the cache" if hit else "decision   MISS: different queries")
