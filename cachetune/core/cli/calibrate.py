"""``cachetune calibrate``: a threshold from the user's own labelled pairs, or which pairs to label."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cachetune.core.errors import CachetuneError


def _print_calibration(result: dict) -> None:
    click.echo(f"adapter {result['adapter']}: calibration '{result['name']}' on {result['pairs']} pairs "
               f"({result['positives']} same-question)")
    click.echo(f"threshold          {result['threshold']:.4f} (cosine similarity; stored and selected)")
    click.echo(f"expected hit rate  {result['hit_rate']:.3f} of same-question pairs served")
    click.echo(f"precision          >= {result['precision_lower_bound']:g} with {result['confidence']:g} confidence "
               f"(the guarantee); {result['precision_observed']:.4f} observed on the {result['served']} pairs "
               "at or above the threshold")
    if result.get("weighted"):
        click.echo("                   (labels weighted by 1 / inclusion_probability: the bound uses the weighted "
                   "pairs' effective number, an approximation)")
    from cachetune.core.evaluate.calibrate_report import tightening_lines

    for line in tightening_lines(result):
        click.echo(line)


def register(cli, pm) -> None:
    from cachetune.core.cli.adapters import registry_option

    @cli.command()
    @click.argument("ref", metavar="NAME[@VERSION]")
    @click.option("--pairs", type=click.Path(path_type=Path), help="Your labelled pairs (CSV/TSV with a header, "
                                                                     "or JSONL): sentence1, sentence2, label.")
    @click.option("--columns", metavar="A,B,LABEL", help="Column names of --pairs, if not sentence1,sentence2,label.")
    @click.option("--target-precision", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95,
                  show_default=True, help="Precision the threshold must keep on your traffic.")
    @click.option("--confidence", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.9,
                  show_default=True, help="Confidence of the precision guarantee.")
    @click.option("--name", help="Name of this calibration (default: calibration-<date>); several may coexist.")
    @click.option("--report", "report_dir", type=click.Path(path_type=Path),
                  help="Write report.md and calibration.png here.")
    @click.option("--select", "select", metavar="NAME", help="Serve at calibration NAME's threshold ('evaluation' "
                                                             "for the evaluated one) and exit.")
    @click.option("--suggest", type=int, metavar="N", help="Sample N pairs to label from --queries, mostly around "
                                                           "the threshold; each carries its inclusion_probability, "
                                                           "which --pairs then weights the labels by.")
    @click.option("--seed", type=int, default=0, show_default=True, help="With --suggest: the sample's seed.")
    @click.option("--queries", type=click.Path(path_type=Path), help="With --suggest: a log of queries (JSONL with "
                                                                       "'query'/'text', or one per line).")
    @click.option("--output", type=click.Path(path_type=Path), help="With --suggest: the pairs file to write "
                                                                      "(.csv/.tsv/.jsonl), label left empty.")
    @click.option("--overwrite", is_flag=True, help="With --suggest: replace an existing --output.")
    @click.option("--threshold", type=float, help="With --suggest: the threshold to aim at (default: the stored one).")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @registry_option
    def calibrate(ref, pairs, columns, target_precision, confidence, name, report_dir, select, suggest, seed,
                  queries, output, overwrite, threshold, as_json, registry):
        """Choose REF's cache threshold from your own labelled pairs, with a precision guarantee.

        The threshold is the lowest whose precision on traffic like your pairs is at least
        --target-precision with --confidence (exact binomial bound, thresholds tested in a fixed
        sequence so choosing it does not spend the guarantee). It is stored on the registry record
        and served and exported from then on. With --suggest N, writes N pairs from --queries to
        label, sampled mostly around the threshold, with the probability each had of being picked.
        """
        from cachetune.core.evaluate import calibrate as stage
        from cachetune.core.evaluate.inputs import parse_columns
        from cachetune.core.outputs import check_output
        from cachetune.core.serving.models import load_model, open_registry, read_texts

        modes = [bool(pairs), suggest is not None, select is not None]
        if sum(modes) != 1:
            raise click.UsageError("give exactly one of --pairs, --suggest N or --select NAME")
        if select is not None:
            record = open_registry(registry).select_calibration(ref, None if select == "evaluation" else select)
            click.echo(f"{record['ref']} now serves at threshold {record['calibrated_threshold']}")
            return
        reg = open_registry(registry)
        if suggest is not None:
            if queries is None or output is None:
                raise click.UsageError("--suggest needs --queries and --output")
            check_output(output, "--output", overwrite=overwrite)
            texts = read_texts(queries)
            record = reg.get(ref)
            result = stage.suggest_pairs(record, load_model(adapter=record["ref"], registry=reg), texts, suggest,
                                         output, where=queries, threshold=threshold, seed=seed)
            click.echo(json.dumps(result) if as_json else
                       f"{result['written']} pairs to label (of {result['candidates']} candidates from "
                       f"{result['queries']} queries, around threshold {result['threshold']:.4f}) -> {output}")
            return
        if report_dir is not None:
            check_output(report_dir, "--report", folder=True, overwrite=True)
        record = reg.get(ref)
        result = stage.calibrate_adapter(reg, record, lambda: load_model(adapter=record["ref"], registry=reg), pairs,
                                         columns=parse_columns(columns) if columns else None,
                                         target_precision=target_precision, confidence=confidence, name=name,
                                         report_dir=report_dir)
        if as_json:
            click.echo(json.dumps(result))
        else:
            _print_calibration(result)
