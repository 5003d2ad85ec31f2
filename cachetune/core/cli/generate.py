"""``cachetune generate``: turn prepared queries into training triplets with an LLM backend."""

from __future__ import annotations

from pathlib import Path

import click

from cachetune.core.cli import domain_option
from cachetune.core.errors import CachetuneError

DEFAULT_BACKEND = "llama-cpp"


class BackendChoice(click.ParamType):
    """``--backend``: one of the registered generator backends (looked up when parsed)."""

    name = "backend"

    def __init__(self, pm):
        self.pm = pm

    def get_metavar(self, param, *args, **kwargs) -> str:
        try:
            return "[" + "|".join(sorted(self.pm.generators())) + "]"
        except CachetuneError:
            return "NAME"

    def convert(self, value, param, ctx):
        backends = self.pm.generators()
        if value not in backends:
            self.fail(f"unknown backend '{value}' (registered: {', '.join(sorted(backends)) or 'none'})", param, ctx)
        return value


def _summary_lines(summary: dict) -> list:
    by_source = summary["triplets_by_negative_source"]
    lines = [
        f"{summary['domain']}: {summary['queries_done']} queries done "
        f"({summary['queries_skipped_done']} already in the output, {summary['queries_without_triplets']} gave no "
        f"triplet), {summary['triplets_written']} triplets written (llm negatives {by_source['llm']}, mined "
        f"{by_source['mined']}; {summary['triplets_per_query']} per query) -> {summary['output']}",
    ]
    rejected = summary["rejected"]
    if rejected:
        lines.append(f"rejected {summary['rejected_total']}: " + ", ".join(f"{k} {v}" for k, v in rejected.items()))
    else:
        lines.append("rejected 0")
    tokens = summary["tokens"]
    lines.append(f"{summary['generator']}: {summary['llm_requests']} requests "
                 f"({summary.get('llm_requests_skipped', 0)} skipped: no triplet possible), tokens prompt {tokens['prompt']} "
                 f"completion {tokens['completion']}, {summary['wall_time_s']:.1f} s, "
                 f"{summary['queries_per_s']:.3f} queries/s")
    return lines


def register(cli, pm) -> None:
    @cli.command()
    @domain_option(pm)
    @click.option("--input", "input_path", type=click.Path(path_type=Path), required=True,
                  help="train.jsonl from `cachetune prepare` (or a JSONL of anchor/positive pairs).")
    @click.option("--output", type=click.Path(path_type=Path), required=True, help="Triplets JSONL to write.")
    @click.option("--backend", type=BackendChoice(pm), default=DEFAULT_BACKEND, show_default=True,
                  help="Generator backend (see `cachetune plugins`).")
    @click.option("--model", help="Backend model: a GGUF path (llama-cpp), a hub id or folder (vllm, transformers), "
                                  "a served model name (openai). Default: Qwen2.5-Coder-0.5B GGUF (llama-cpp), the "
                                  "server's first model (openai).")
    @click.option("-o", "--option", "backend_option", type=(str, str), multiple=True, metavar="NAME VALUE",
                  help="An option the backend declares, e.g. `-o tensor_parallel 4` (vllm), `-o base_url URL` "
                       "(openai); repeatable. `cachetune plugins` lists each backend's options.")
    @click.option("--paraphrases", type=int, default=3, show_default=True, help="Paraphrases asked per query.")
    @click.option("--negatives", type=int, default=2, show_default=True, help="LLM hard negatives asked per query.")
    @click.option("--batch-size", type=int,
                  help="Queries per backend call; their triplets are written when it returns (openai: as "
                       "each query's replies arrive). Default: the "
                       "backend's (llama-cpp 1, openai 32, vllm 256, transformers half its concurrency).")
    @click.option("--temperature", type=float, default=0.7, show_default=True)
    @click.option("--max-tokens", type=int, default=256, show_default=True, help="Tokens per reply.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seeds every request (per query and kind).")
    @click.option("--mine-negatives", type=int, default=0, show_default=True,
                  help="Also mine K negatives per anchor from the input's queries with the base model.")
    @click.option("--mine-fallback/--no-mine-fallback", default=False, show_default=True,
                  help="Mine one negative per paraphrase for the queries whose LLM negatives were all rejected.")
    @click.option("--mining-margin", type=float, default=0.05, show_default=True,
                  help="Mined negatives score at most positive - |positive| * margin.")
    @click.option("--limit", type=int, help="Only the first N queries of the input.")
    @click.option("--resume/--no-resume", default=True, show_default=True,
                  help="Skip query ids already in the output; --no-resume starts the output over.")
    @click.option("--embedding-filter/--no-embedding-filter", default=True, show_default=True,
                  help="Drop paraphrases / negatives by similarity to the query with the base model.")
    @click.option("--paraphrase-floor", type=float, default=None,
                  help="Minimum paraphrase-query cosine similarity (default: the domain's, else 0.6).")
    @click.option("--negative-ceiling", type=float, default=None,
                  help="Maximum negative-query cosine similarity (default: the domain's, else 0.9).")
    @click.option("--base-model", help="Embedding model for the filter and mining (default: the domain's).")
    @click.option("--ask-together/--ask-in-turn", default=False, show_default=True,
                  help="Send a query's paraphrase and negative requests at once; by default the negatives "
                       "go first and the paraphrases only when a negative could pass (same triplets, fewer "
                       "requests).")
    def generate(domain, input_path, output, backend, model, backend_option, paraphrases, negatives, batch_size,
                 temperature, max_tokens, seed, mine_negatives, mine_fallback, mining_margin, limit, resume,
                 embedding_filter, paraphrase_floor, negative_ceiling, base_model, ask_together):
        """Generate (anchor, positive, negative) triplets from prepared queries."""
        from tqdm import tqdm

        from cachetune.core.generate import pipeline as stage
        from cachetune.core.generate.backends import backend_settings
        from cachetune.core.generate.prompting import DomainRules

        config = stage.GenerateConfig(
            domain=domain, input=input_path, output=output, paraphrases=paraphrases, negatives=negatives,
            batch_size=batch_size, limit=limit, seed=seed, resume=resume, mine_negatives=mine_negatives,
            mine_fallback=mine_fallback, mining_margin=mining_margin, base_model=base_model,
            embedding_filter=embedding_filter, paraphrase_floor=paraphrase_floor, negative_ceiling=negative_ceiling,
            ask_together=ask_together,
        )
        chosen = pm.generators()[backend].value
        # Checked here, before any model loads: an unknown or mistyped -o is one error line.
        options = backend_settings(chosen, {"model": model, "temperature": temperature, "max_tokens": max_tokens,
                                            "seed": seed}, dict(backend_option))
        the_domain = pm.get_domain(domain)
        summary = stage.generate_triplets(
            config, pm.prompt_templates(domain), lambda: chosen.factory(options),
            default_base_model=the_domain.default_base_model, rules=DomainRules.of(the_domain),
            progress=lambda total: tqdm(total=total, desc="generating", unit=" queries", mininterval=1.0, leave=False),
            log=lambda message: click.echo(message, err=True), generator_options={"backend": chosen.name, **options},
        )
        for line in _summary_lines(summary):
            click.echo(line)
        if summary["interrupted"]:
            click.echo("Interrupted: the triplets above are written; rerun the same command to resume.", err=True)
            # Re-raised so the CLI exits with 130 (main() turns an Exit code raised here into 0).
            raise KeyboardInterrupt
