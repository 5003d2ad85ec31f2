"""Stage 3: train a LoRA adapter on triplets with MultipleNegativesRankingLoss.

A lean loop of our own around sentence-transformers + peft, measured faster on CPU than
``SentenceTransformerTrainer`` (``bench/train.py``): texts are tokenised once, batches are
length-grouped and hold no duplicate anchors (see :mod:`cachetune.core.train.data`), and
each step embeds its distinct texts in forwards of similar-length texts padded only to their
own longest (:func:`embed_columns`). The loss is sentence-transformers'
``MultipleNegativesRankingLoss`` with scale ``1 / temperature`` over the positives and the
triplets' hard negatives (in-batch negatives + hard negatives); ``hard_negatives=False``
drops the negative column, as the upstream recipe's trainer does.

AdamW, linear warmup then linear decay, gradient clipping (0.5). On CUDA, bf16 (or fp16 with
a grad scaler) autocast. Under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE > 1``)
every rank takes its own share of the batches and the LoRA gradients are averaged across
ranks; only rank 0 writes. Checkpoints every N steps allow an exact resume after a kill.

Output folder: peft's ``adapter_config.json`` + ``adapter_model.safetensors`` and the card
``cachetune.json``. Options and pre-flight checks live in :mod:`cachetune.core.train.config`,
the base-model/held-out scoring in :mod:`cachetune.core.train.scoring`. No click and no
registry here: ``core/cli/train.py`` parses options and registers the result (``--register``).
"""

from __future__ import annotations

import math
import platform
import random
import time
import warnings
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional

from cachetune.core.adapters import CARD_FILE, PEFT_WEIGHTS
from cachetune.core.errors import CachetuneError
from cachetune.core.jsonl import write_json
from cachetune.core.models import canonical_model_id, resolve_base_model, sha256_file, weights_sha256
from cachetune.core.train import checkpoints as ckpt
from cachetune.core.train.config import (
    CPU_TOKENS_PER_FORWARD,
    MIN_TRIPLETS,
    TrainConfig,
    check_output,
    check_resume,
)
from cachetune.core.train.data import TokenizedTexts, TripletBatchSampler, load_triplets
from cachetune.core.train.runtime import Runtime, gather_rng_states, init_runtime, sync_gradients
from cachetune.core.train.scoring import drop_inverted_triplets, evaluate_base_and_adapter
from cachetune.core.train.signal import training_sources

def build_lora_model(model, config: TrainConfig):
    """Wrap ``model[0]``'s transformer in a trainable peft LoRA model (in place); returns it."""
    from peft import LoraConfig, get_peft_model

    from cachetune.core.adapters import set_auto_model

    # peft only complains when *no* name matches; a typo in one of two names would silently
    # train fewer modules, so every name must match a linear layer.
    import torch

    linear = [name for name, mod in model[0].auto_model.named_modules() if isinstance(mod, torch.nn.Linear)]
    for wanted in config.target_modules:
        if not any(name == wanted or name.endswith("." + wanted) for name in linear):
            raise CachetuneError(f"--target-modules {','.join(config.target_modules)}: the base model has no "
                                 f"linear layer named '{wanted}'")
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.target_modules), bias="none")
    try:
        with warnings.catch_warnings():  # transformers' deprecation notices from inside peft
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(model[0].auto_model, lora)
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CachetuneError(f"--target-modules {','.join(config.target_modules)}: {first}") from None
    set_auto_model(model[0], peft_model)
    return peft_model


def _linear_warmup(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def library_versions() -> Dict[str, str]:
    from importlib import metadata

    from cachetune import __version__

    versions = {"cachetune": __version__, "python": platform.python_version()}
    for dist in ("torch", "transformers", "sentence-transformers", "peft"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover
            versions[dist] = "unknown"
    return versions


def train(config: TrainConfig, domain_plugin: Optional[dict] = None, log: Callable[[str], None] = print,
          show_progress: bool = True, warn: Optional[Callable[[str], None]] = None) -> dict:
    """Train an adapter into ``config.output``; returns its card (on rank 0; {} elsewhere).
    ``warn`` gets the warnings (default: ``log``)."""
    return run_training(config, domain_plugin, log, show_progress, warn)[0]


def run_training(config: TrainConfig, domain_plugin: Optional[dict] = None, log: Callable[[str], None] = print,
                 show_progress: bool = True, warn: Optional[Callable[[str], None]] = None):
    """Like :func:`train`, but returns ``(card, model)``: the trained SentenceTransformer
    (adapter attached, eval mode) as it is in memory, e.g. to compare with a reload."""
    config.validate()
    runtime = init_runtime(config.precision, config.threads)
    quiet = lambda _msg: None  # noqa: E731 - ranks other than 0 say nothing
    try:
        return _train(config, runtime, domain_plugin or {}, log if runtime.main else quiet,
                      show_progress and runtime.main, (warn or log) if runtime.main else quiet)
    finally:
        if runtime.distributed:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(config: TrainConfig, rt: Runtime, domain_plugin: dict, log, show_progress: bool, warn) -> dict:
    import numpy as np
    import torch
    from tqdm import tqdm

    from cachetune.core.train.losses import guide_embeddings, make_loss

    from cachetune.core.models import load_sentence_transformer

    started = time.time()
    base_path = resolve_base_model(config.base_model)
    base_id = canonical_model_id(base_path)
    check_output(config)
    resume_dir = ckpt.find_checkpoint(config.resume_from) if config.resume_from is not None else None

    data = load_triplets(config.train_data, config.domain, need_negative=config.hard_negatives)
    eval_data = load_triplets(config.eval_data, config.domain) if config.eval_data else None
    settings = {
        "domain": config.domain,
        "base_model": {"id": base_id, "weights_sha256": weights_sha256(base_path)},
        "data_sha256": sha256_file(config.train_data),
        "world_size": rt.world_size,
        "hyperparameters": config.hyperparameters(),
    }
    state, tensors = ({}, {}) if resume_dir is None else ckpt.load_checkpoint(resume_dir)
    if resume_dir is not None:
        check_resume(state, settings, resume_dir)
    if rt.main and config.overwrite and resume_dir is None:
        ckpt.remove_checkpoints(config.output)  # stale checkpoints would mix with this run's

    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = load_sentence_transformer(base_path, device=str(rt.device))
    limit = getattr(model[0].auto_model.config, "max_position_embeddings", None)
    if limit and config.max_seq_length > limit:
        raise CachetuneError(f"--max-seq-length {config.max_seq_length} exceeds the base model's limit ({limit})")
    model.max_seq_length = config.max_seq_length
    if config.drop_inverted and config.hard_negatives:
        dropped = drop_inverted_triplets(model, data, rt)
        log(f"dropped {dropped:,} triplets the base model ranks backwards (--keep-inverted keeps them)")
        if not data.anchors:
            raise CachetuneError("every triplet is ranked backwards by the base model: check the negatives "
                                 "(or pass --keep-inverted)", config.train_data)
    columns = [data.anchors, data.positives] + ([data.negatives] if config.hard_negatives else [])
    texts = TokenizedTexts(model.tokenizer, [t for col in columns for t in col], config.max_seq_length)
    # The guide is the base model: its embeddings are taken before LoRA is attached.
    guide = guide_embeddings(model, texts, batch_size=256 if rt.device.type == "cuda" else 64) \
        if config.guide_filter else None
    peft_model = build_lora_model(model, config)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in peft_model.parameters())
    if rt.distributed:
        import torch.distributed as dist

        for p in trainable:  # every rank starts from rank 0's LoRA initialisation
            dist.broadcast(p.data, 0)
        torch.manual_seed(config.seed + rt.rank)  # but draws its own dropout masks
    log(f"trainable parameters: {n_trainable:,} of {n_total:,} ({100.0 * n_trainable / n_total:.2f}%)")

    column_ids = [texts.ids(col) for col in columns]
    lengths = [sum(texts.lengths[col[i]] for col in column_ids) for i in range(len(data))]
    sampler = TripletBatchSampler(data.anchors, data.positives, data.negatives if config.hard_negatives
                                  else [None] * len(data), lengths, config.batch_size, seed=config.seed,
                                  world_size=rt.world_size, rank=rt.rank)
    # Epochs can differ by a batch (rows kept apart by the no-duplicates rule), so count each one.
    epoch_steps = [sampler.steps_per_epoch(e) for e in range(config.epochs)]
    steps_per_epoch = epoch_steps[0]
    if steps_per_epoch == 0:
        raise CachetuneError(f"{len(data)} triplets make fewer batches than there are processes ({rt.world_size})",
                             config.train_data)
    while config.min_steps and sum(epoch_steps) < config.min_steps:  # a small file: more epochs
        epoch_steps.append(sampler.steps_per_epoch(len(epoch_steps)))
    epochs = len(epoch_steps)
    total_steps = sum(epoch_steps)
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    warmup_steps = math.ceil(total_steps * config.warmup_ratio)
    if len(data) < MIN_TRIPLETS:
        warn(f"Warning: only {len(data)} triplet(s) to train on ({total_steps} step(s)): too few to change the "
             f"embeddings much; generate at least {MIN_TRIPLETS} (a few thousand is typical)")
    log(f"{len(data):,} triplets ({data.skipped_total} skipped), {steps_per_epoch} steps/epoch x {epochs} "
        f"epoch(s) = {total_steps} steps, batch {config.batch_size}{'' if config.hard_negatives else ', no hard negatives'}"
        f"; device {rt.device}, {rt.precision}, {rt.threads} threads"
        + (f", {rt.world_size} processes" if rt.world_size > 1 else ""))

    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_warmup(warmup_steps, total_steps))
    scaler = torch.amp.GradScaler("cuda") if rt.precision == "fp16" else None
    loss_fn = make_loss(config.loss, model, 1.0 / config.temperature, guide=guide,
                        pair_weight=config.pair_loss_weight)
    global_step, epoch, batch_pos, losses, elapsed = 0, 0, 0, [], 0.0
    if resume_dir is not None:
        ckpt.restore(resume_dir, tensors, peft_model, optimizer, scheduler, scaler, rt.rank)
        global_step, epoch, batch_pos = state["global_step"], state["epoch"], state["batch"]
        losses, elapsed = list(state["losses"]), float(state["elapsed_s"])
        log(f"resuming from {resume_dir} at step {global_step}")

    forward_tokens = config.tokens_per_forward
    if forward_tokens is None:  # CPU: padding costs compute; GPU: one large forward is faster
        forward_tokens = 0 if rt.device.type == "cuda" else CPU_TOKENS_PER_FORWARD
    autocast = (torch.autocast(rt.device.type, dtype=torch.bfloat16 if rt.precision == "bf16" else torch.float16)
                if rt.precision in ("bf16", "fp16") else nullcontext())
    model.train()
    bar = tqdm(total=total_steps, initial=global_step, desc="training", unit="step", disable=not show_progress,
               dynamic_ncols=True, mininterval=0.5)
    loop_start = time.perf_counter()
    triplets_seen = 0
    while global_step < total_steps:
        batches = sampler.rank_batches(epoch)
        if batch_pos >= len(batches):
            epoch, batch_pos = epoch + 1, 0
            continue
        rows = batches[batch_pos]
        batch_ids = [[col[i] for i in rows] for col in column_ids]
        with autocast:
            embeddings = embed_columns(model, texts, batch_ids, rt.device, forward_tokens)
            loss = loss_fn(embeddings, batch_ids)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        step_loss = sync_gradients(trainable, loss.detach(), rt) if rt.distributed else loss.item()
        if not math.isfinite(step_loss):  # every rank sees the same (averaged) loss and stops here
            bar.close()
            raise CachetuneError(f"training diverged at step {global_step + 1}: the loss is {step_loss} "
                                 "(lower --lr or --temperature); no adapter was written", config.output)
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        global_step += 1
        batch_pos += 1
        triplets_seen += len(rows) * rt.world_size
        losses.append(round(step_loss, 6))
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", refresh=False)
        if config.checkpoint_every and global_step % config.checkpoint_every == 0 and global_step < total_steps:
            rngs = gather_rng_states(rt)
            if rt.main:
                run_s = elapsed + time.perf_counter() - loop_start
                folder = ckpt.save_checkpoint(
                    config.output, global_step, peft_model, base_id,
                    {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict() if scaler is not None else None, "rng": rngs},
                    {"settings": settings, "global_step": global_step, "epoch": epoch, "batch": batch_pos,
                     "total_steps": total_steps, "losses": losses, "elapsed_s": run_s,
                     "triplets_seen": triplets_seen + int(state.get("triplets_seen", 0) if state else 0)})
                with tqdm.external_write_mode():  # keeps the progress bar intact
                    log(f"checkpoint: {folder} (step {global_step}, loss {step_loss:.4f})")
    bar.close()
    elapsed += time.perf_counter() - loop_start
    model.eval()
    if not rt.main:
        return {}, model

    loop_s = elapsed - (float(state["elapsed_s"]) if state else 0.0)
    results = {
        "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4),
        "wall_time_s": round(elapsed, 2),
        "triplets_per_s": round(triplets_seen / loop_s, 1) if loop_s > 0 else None,
        "steps": global_step,
        "triplets_seen": triplets_seen + int(state.get("triplets_seen", 0) if state else 0),
    }
    if eval_data is not None:
        results["eval"] = evaluate_base_and_adapter(model, peft_model, eval_data)
        log(f"held-out ({len(eval_data)} triplets): base margin {results['eval']['base']['margin']:+.4f}, "
            f"adapter margin {results['eval']['adapter']['margin']:+.4f}; accuracy "
            f"{results['eval']['base']['accuracy']:.3f} -> {results['eval']['adapter']['accuracy']:.3f}")
    card = {
        "cachetune_version": library_versions()["cachetune"],
        "domain": config.domain,
        "domain_plugin": domain_plugin,
        "base_model": settings["base_model"],
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                 "target_modules": list(config.target_modules)},
        "trainable_parameters": n_trainable,
        "data": {"path": str(config.train_data), "sha256": settings["data_sha256"], "triplets": len(data),
                 "skipped": data.skipped_total, "skipped_by_reason": dict(data.skipped),
                 "sources": data.source_counts(), **training_sources(config.train_data)},
        "hyperparameters": {**settings["hyperparameters"], "optimizer": "AdamW", "schedule": "linear warmup + decay",
                            "warmup_steps": warmup_steps, "total_steps": total_steps,
                            "epochs_run": epochs, "loss_function": "MultipleNegativesRankingLoss" + (
                                " (symmetric)" if config.loss == "symmetric" else "") + (
                                ", guide filter: base model" if config.guide_filter else "") + (
                                f" + {config.pair_loss_weight:g} x CoSENT (batch pairs)" if config.pair_loss_weight else ""),
                            "precision": rt.precision,
                            "world_size": rt.world_size, "checkpoint_every": config.checkpoint_every},
        "results": results,
        "versions": library_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(config.output)
    ckpt.save_peft_files(peft_model, out, base_id)
    write_json(out / CARD_FILE, card)  # written last: a card means the folder is complete
    ckpt.remove_checkpoints(out)
    size = (out / PEFT_WEIGHTS).stat().st_size
    log(f"adapter: {out} ({PEFT_WEIGHTS} {size / 1024:.1f} KiB, {n_trainable:,} trainable parameters); "
        f"{global_step} steps, final loss {results['final_loss']}, {results['triplets_per_s']} triplets/s, "
        f"{results['wall_time_s']} s training ({time.time() - started:.1f} s in all)")
    return card, model


def embed_columns(model, texts: TokenizedTexts, columns: List[List[int]], device, max_tokens: int = 0) -> List:
    """Embeddings of a step's columns (lists of text ids), computed once per distinct text.

    All texts of the step are pooled, sorted by length and cut into forwards of at most
    ``max_tokens`` padded tokens (0: one forward), so each forward pads only across texts of
    nearly equal length. Attention masks make every embedding independent of what it is
    batched with, so this changes speed, not results; gradients reach every use of a text.
    """
    import torch

    unique = sorted({t for col in columns for t in col}, key=lambda t: texts.lengths[t])
    pieces, start = [], 0
    while start < len(unique):
        end = start + 1
        while end < len(unique) and (max_tokens <= 0 or (end + 1 - start) * texts.lengths[unique[end]] <= max_tokens):
            end += 1
        features = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in texts.batch(unique[start:end]).items()}
        pieces.append(model(features)["sentence_embedding"].float())
        start = end
    pooled = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
    where = {t: k for k, t in enumerate(unique)}
    return [pooled[torch.tensor([where[t] for t in col], device=pooled.device)] for col in columns]


