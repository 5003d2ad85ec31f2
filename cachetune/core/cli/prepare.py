"""``cachetune prepare``: clean, deduplicate and split a domain's queries."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cachetune.core.cli import domain_option


def register(cli, pm) -> None:
    @cli.command()
    @domain_option(pm)
    @click.option("--source", help="Hub id (org/name[:config]), a file (JSONL/CSV/TXT/JSON) or a folder. "
                                   "Default: the domain's shipped sample.")
    @click.option("--limit", type=int, help="Keep at most N queries (seeded sample).")
    @click.option("--holdout", type=float, default=0.1, show_default=True, help="Held-out fraction.")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--query-field", help="Column/field holding the query in generic files.")
    @click.option("--group-field", help="Field whose queries stay on one side of the split (default: the "
                                        "domain's: CoNaLa question_id, MedQuAD focus).")
    @click.option("--output", type=click.Path(path_type=Path), required=True, help="Output folder.")
    @click.option("--overwrite", is_flag=True, help="Replace train.jsonl, holdout.jsonl and prepare.json "
                                                    "already in --output.")
    def prepare(domain, source, limit, holdout, seed, query_field, group_field, output, overwrite):
        """Read, normalise, deduplicate and split a domain's queries."""
        from tqdm import tqdm

        from cachetune.core.data.prepare import prepare as run_prepare

        summary = run_prepare(
            pm.get_domain(domain), output, source=source, limit=limit, holdout=holdout, seed=seed,
            readers=pm.source_readers(), query_field=query_field, group_field=group_field, overwrite=overwrite,
            progress=lambda it: tqdm(it, desc="reading", unit=" queries", leave=False, mininterval=0.5, disable=None),
        )
        c = summary["counts"]
        click.echo(
            f"{domain}: read {c['read']}, reserved for evaluation {c['reserved_for_evaluation']}, empty {c['empty']}, too short {c['too_short']}, too long {c['too_long']}, "
            f"exact duplicates {c['exact_duplicates']}, case-only duplicates {c['case_duplicates']}, near duplicates {c['near_duplicates']}, kept {c['kept']} "
            f"(train {c['train']}, held out {c['holdout']}; split by {summary['group_field'] or 'query'}) -> {output}"
        )
