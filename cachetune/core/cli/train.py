"""``cachetune train``: train a LoRA adapter for a domain's embedder on triplets."""

from __future__ import annotations

from pathlib import Path

import click

from cachetune.core.cli import domain_option
from cachetune.core.cli.adapters import registry_option

# Mirrors cachetune.core.train.config.DEFAULT_LR without importing the training module (and torch) for --help.
DEFAULT_LR = 2e-3


def _modules(ctx, param, value):
    names = tuple(m.strip() for m in value.split(",") if m.strip())
    if not names:
        raise click.BadParameter("name at least one module, e.g. query,value", ctx, param)
    return names


def _named_files(ctx, param, value):
    named = {}
    for item in value:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise click.BadParameter(f"expected NAME=FILE, got '{item}'", ctx, param)
        named[name.strip()] = path.strip()
    return named


def training_signal_options(command):
    """The options that add human training signal (shared by ``train`` and ``run``)."""
    for option in reversed([
        click.option("--training-sets", help="The domain's human training sets to add: all, none, or names, "
                                             "comma-separated (default: none for train, all for run)."),
        click.option("--training-source", "training_sources", multiple=True, callback=_named_files,
                     metavar="NAME=FILE", help="The data file of training set NAME (repeatable), e.g. "
                                               "rqe-train=RQE_Train_8588_AMIA2016.xml."),
        click.option("--pairs", "pairs", type=click.Path(path_type=Path), multiple=True,
                     help="Your labelled pairs (JSONL or CSV: sentence1,sentence2,label[,group]); label 1: "
                          "positives, label 0: hard negatives for sentence1 (repeatable)."),
    ]):
        command = option(command)
    return command


def register(cli, pm) -> None:
    """Add the command(s) to ``cli``."""

    @cli.command()
    @domain_option(pm)
    @click.option("--train-data", type=click.Path(path_type=Path), multiple=True,
                  help="Triplets JSONL: {anchor, positive, negative, ...} per line (repeatable).")
    @training_signal_options
    @click.option("--prepared", type=click.Path(path_type=Path),
                  help="A `cachetune prepare` folder: its held-out queries never train, its training queries "
                       "join the pool negatives are mined from.")
    @click.option("--relative-margin", type=float, default=0.05, show_default=True,
                  help="A mined negative scores at most positive * (1 - margin) against the anchor.")
    @click.option("--base-model", help="Hub id or local folder (default: the embedded all-MiniLM-L6-v2).")
    @click.option("--output", type=click.Path(path_type=Path), required=True, help="Adapter folder to write.")
    @click.option("--epochs", type=int, default=1, show_default=True)
    @click.option("--batch-size", type=int, default=128, show_default=True, help="Triplets per step (per process).")
    @click.option("--lr", type=float, default=DEFAULT_LR, show_default=True,
                  help="Peak learning rate (chosen by a held-out sweep; the seed recipe used 2e-5).")
    @click.option("--temperature", type=float, default=0.05, show_default=True,
                  help="Softmax temperature of the ranking loss (scale = 1/temperature).")
    @click.option("--lora-r", type=int, default=8, show_default=True)
    @click.option("--lora-alpha", type=float, default=16, show_default=True)
    @click.option("--lora-dropout", type=float, default=0.1, show_default=True)
    @click.option("--target-modules", default="query,value", show_default=True, callback=_modules,
                  help="Comma-separated module names that get LoRA weights.")
    @click.option("--max-seq-length", type=int, default=128, show_default=True)
    @click.option("--eval-data", type=click.Path(path_type=Path),
                  help="Held-out triplets JSONL: report margin and accuracy of base vs adapter.")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--no-hard-negatives", "no_hard_negatives", is_flag=True,
                  help="Train on (anchor, positive) only, as the upstream trainer does.")
    @click.option("--drop-inverted/--keep-inverted", default=True, show_default=True,
                  help="Drop triplets the base model ranks backwards (cos(anchor, negative) >= "
                       "cos(anchor, positive)): with a small generator these are mostly mislabelled.")
    @click.option("--warmup-ratio", type=float, default=0.1, show_default=True)
    @click.option("--weight-decay", type=float, default=0.01, show_default=True)
    @click.option("--max-grad-norm", type=float, default=0.5, show_default=True)
    @click.option("--checkpoint-every", type=int, default=100, show_default=True,
                  help="Save a resumable checkpoint every N steps into OUTPUT/checkpoints (0: never).")
    @click.option("--resume-from-checkpoint", "resume_from", type=click.Path(path_type=Path),
                  help="A checkpoint folder, or a run's output folder (its latest checkpoint).")
    @click.option("--overwrite", is_flag=True, help="Replace an adapter or checkpoints already in --output.")
    @click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
                  show_default=True, help="auto: fp32 on every device (bf16 autocast was 1.9x slower for MiniLM on an H200); "
                       "bf16/fp16: autocast (fp16 on CUDA only).")
    @click.option("--threads", type=int, help="Torch threads (default: physical cores per process).")
    @click.option("--max-steps", type=int, help="Stop after N steps (benchmarks, smoke tests).")
    @click.option("--min-steps", type=int, help="Train at least N steps: more epochs over a small file.")
    @click.option("--loss", type=click.Choice(["mnrl", "symmetric"]), default="mnrl", show_default=True,
                  help="symmetric: also rank each positive's anchor among the batch's anchors.")
    @click.option("--guide-filter/--no-guide-filter", default=False, show_default=True,
                  help="Mask in-batch candidates the base model scores above the anchor's positive "
                       "(GISTEmbed's false-negative filter, the base model as guide).")
    @click.option("--pair-loss-weight", type=float, default=0.0, show_default=True,
                  help="Add this weight x CoSENT over the batch's pairs: every positive pair scored above "
                       "every negative pair across anchors, the order one cache threshold needs (0: off).")
    @click.option("--tokens-per-forward", type=int,
                  help="Padded tokens per forward pass (default: 4096 on CPU; 0 = one forward per step, "
                       "the GPU default).")
    @click.option("--register/--no-register", "register_adapter", default=False, show_default=True,
                  help="Add the finished adapter to the adapter registry.")
    @registry_option
    @click.option("--quiet", is_flag=True, help="No progress bar.")
    def train(domain, train_data, training_sets, training_sources, pairs, prepared, relative_margin, base_model,
              output, epochs, batch_size, lr, temperature, lora_r, lora_alpha,
              lora_dropout, target_modules, max_seq_length, eval_data, seed, no_hard_negatives, drop_inverted,
              warmup_ratio, weight_decay, max_grad_norm, checkpoint_every, resume_from, overwrite, precision,
              threads, max_steps, min_steps, loss, guide_filter, pair_loss_weight, tokens_per_forward, register_adapter,
              registry, quiet):
        """Train a LoRA adapter with MultipleNegativesRankingLoss (in-batch + hard negatives).

        The training data is the --train-data triplets, or those plus human pairs (--training-sets,
        --pairs) combined into OUTPUT-training-data.jsonl beside the output folder."""
        from cachetune.core.train.config import TrainConfig
        from cachetune.core.train.loop import train as run_train
        from cachetune.core.train.signal import assemble_training_data, select_training_sets

        sets = select_training_sets(pm.training_sets(domain), training_sets or "none")
        if not train_data and not sets and not pairs:
            raise click.UsageError("give --train-data, --pairs or --training-sets")
        if len(train_data) == 1 and not sets and not pairs:
            data_file = train_data[0]
        else:
            data_file = output.parent / f"{output.name}-training-data.jsonl"
            assemble_training_data(pm.get_domain(domain), data_file, triplets=train_data, training_sets=sets,
                                   set_sources=training_sources, pairs=pairs, data_dir=prepared,
                                   evaluation_sets=pm.evaluation_sets(domain), base_model=base_model,
                                   relative_margin=relative_margin, seed=seed, log=click.echo)

        config = TrainConfig(
            domain=domain, train_data=data_file, output=output, base_model=base_model, epochs=epochs,
            batch_size=batch_size, lr=lr, temperature=temperature, lora_r=lora_r, lora_alpha=lora_alpha,
            lora_dropout=lora_dropout, target_modules=target_modules, max_seq_length=max_seq_length,
            eval_data=eval_data, seed=seed, hard_negatives=not no_hard_negatives, drop_inverted=drop_inverted,
            warmup_ratio=warmup_ratio, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
            checkpoint_every=checkpoint_every, resume_from=resume_from, overwrite=overwrite, precision=precision, threads=threads,
            max_steps=max_steps, tokens_per_forward=tokens_per_forward, min_steps=min_steps, loss=loss, pair_loss_weight=pair_loss_weight,
            guide_filter=guide_filter,
        )
        if register_adapter:  # a registry that cannot take the adapter is found now, not after training
            from cachetune.registry import AdapterRegistry

            AdapterRegistry(registry).check_writable()
        info = pm.domain_plugin(domain)
        card = run_train(config, domain_plugin={"name": info.name, "package": info.package, "version": info.version},
                         log=click.echo, show_progress=not quiet, warn=lambda message: click.echo(message, err=True))
        if register_adapter and card:  # rank 0 only: the other ranks get no card
            from cachetune import registry as adapter_registry

            record = adapter_registry.register_trained_adapter(output, registry_dir=registry)
            click.echo(f"registered: {record['ref']}")
