"""What ``cachetune train`` takes (:class:`TrainConfig`) and the checks made before training:
the output folder, and that a resumed run trains what the interrupted one did."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from cachetune.core import outputs
from cachetune.core.adapters import CARD_FILE, PEFT_WEIGHTS
from cachetune.core.errors import CachetuneError
from cachetune.core.train import checkpoints as ckpt

# Chosen from the held-out learning-rate sweep (bench/lr_sweep.py, README): on ~2k CoNaLa
# triplets (16 steps) the seed's 2e-5 leaves the LoRA practically unchanged; the held-out
# margin rises with the rate up to 2e-3 and falls again at 5e-3.
DEFAULT_LR = 2e-3

# Padded tokens per forward on CPU: small enough that texts of similar length share a forward,
# large enough that matrix products stay efficient (bench/train.py).
CPU_TOKENS_PER_FORWARD = 4096

# Settings that fix the training trajectory: a resumed run must use the same ones.
RESUME_OPTIONS = {
    "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "temperature": "--temperature",
    "lora_r": "--lora-r", "lora_alpha": "--lora-alpha", "lora_dropout": "--lora-dropout",
    "target_modules": "--target-modules", "max_seq_length": "--max-seq-length", "seed": "--seed",
    "hard_negatives": "--no-hard-negatives", "drop_inverted": "--keep-inverted",
    "warmup_ratio": "--warmup-ratio", "weight_decay": "--weight-decay", "max_grad_norm": "--max-grad-norm", "max_steps": "--max-steps",
    "min_steps": "--min-steps", "loss": "--loss", "guide_filter": "--guide-filter",
    "pair_loss_weight": "--pair-loss-weight",
}

# What a checkpoint written before an option existed was trained with.
LEGACY_VALUES = {"drop_inverted": False, "min_steps": None, "loss": "mnrl", "guide_filter": False,
                 "pair_loss_weight": 0.0}

# The real-valued settings: each must be a finite number.
FLOAT_SETTINGS = ("lr", "temperature", "lora_alpha", "lora_dropout", "warmup_ratio", "weight_decay", "max_grad_norm",
                  "pair_loss_weight")

# Fewer triplets than this after filtering barely move the LoRA (16 steps on ~2k triplets is the
# measured default run, README): training goes on, with a warning that says how many steps ran.
MIN_TRIPLETS = 100


@dataclass
class TrainConfig:
    """Everything ``cachetune train`` takes; defaults follow the seed recipe except ``lr``."""

    domain: str
    train_data: Path
    output: Path
    base_model: Optional[str] = None
    epochs: int = 1
    batch_size: int = 128
    lr: float = DEFAULT_LR
    temperature: float = 0.05
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.1
    target_modules: Tuple[str, ...] = ("query", "value")
    max_seq_length: int = 128
    eval_data: Optional[Path] = None
    seed: int = 0
    hard_negatives: bool = True
    # Drop triplets the base model ranks backwards (see drop_inverted_triplets).
    drop_inverted: bool = True
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 0.5
    checkpoint_every: int = 100
    resume_from: Optional[Path] = None
    overwrite: bool = False
    precision: str = "auto"
    threads: Optional[int] = None
    max_steps: Optional[int] = None
    # Train at least this many optimizer steps: more epochs over a small file (None: --epochs as given).
    min_steps: Optional[int] = None
    loss: str = "mnrl"  # or "symmetric" (see cachetune.core.train.losses)
    # Mask in-batch candidates the base model scores above the anchor's positive (GISTEmbed-style).
    guide_filter: bool = False
    # Weight of the CoSENT term added to the ranking loss: every positive pair of the batch above
    # every negative one, across anchors, the order a single cache threshold needs (0: off).
    pair_loss_weight: float = 0.0
    tokens_per_forward: Optional[int] = None  # None: CPU_TOKENS_PER_FORWARD on CPU, 0 (unlimited) on GPU

    def validate(self) -> None:
        for name in FLOAT_SETTINGS:  # inf and nan pass every comparison below or fail it misleadingly
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise CachetuneError(f"--{name.replace('_', '-')} must be a finite number, got {value!r}")
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 2, "--batch-size must be at least 2 (in-batch negatives need company)"),
            (self.lr > 0, "--lr must be positive"),
            (self.temperature > 0, "--temperature must be positive"),
            (self.lora_r >= 1, "--lora-r must be at least 1"),
            (self.lora_alpha > 0, "--lora-alpha must be positive"),
            (0 <= self.lora_dropout < 1, "--lora-dropout must be in [0, 1)"),
            (bool(self.target_modules), "--target-modules must name at least one module"),
            (self.max_seq_length >= 4, "--max-seq-length must be at least 4"),
            (0 <= self.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)"),
            (self.weight_decay >= 0, "--weight-decay must not be negative"),
            (self.max_grad_norm > 0, "--max-grad-norm must be positive"),
            (self.checkpoint_every >= 0, "--checkpoint-every must not be negative"),
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be at least 1"),
            (self.min_steps is None or self.min_steps >= 1, "--min-steps must be at least 1"),
            (self.loss in ("mnrl", "symmetric"), "--loss must be mnrl or symmetric"),
            (self.pair_loss_weight >= 0, "--pair-loss-weight must not be negative"),
            (self.threads is None or self.threads >= 1, "--threads must be at least 1"),
            (self.tokens_per_forward is None or self.tokens_per_forward >= 0, "--tokens-per-forward must not be negative"),
            (self.precision in ("auto", "fp32", "bf16", "fp16"), "--precision must be auto, fp32, bf16 or fp16"),
        ]
        for ok, message in checks:
            if not ok:
                raise CachetuneError(message)

    def hyperparameters(self) -> dict:
        hp = {k: getattr(self, k) for k in RESUME_OPTIONS}
        hp["target_modules"] = list(self.target_modules)
        hp["scale"] = round(1.0 / self.temperature, 6)
        return hp


def check_output(config: TrainConfig) -> None:
    """Before anything loads: not inside a registry, writable, and no finished adapter or
    unfinished run replaced without ``--overwrite``."""
    out = outputs.check_output(config.output, "--output", folder=True, overwrite=True)
    if config.overwrite or not out.exists():
        return
    if (out / PEFT_WEIGHTS).exists() or (out / CARD_FILE).exists():
        raise CachetuneError("output already holds a trained adapter (pass --overwrite to replace it)", out)
    if (out / ckpt.CHECKPOINTS_DIR).exists() and config.resume_from is None:
        raise CachetuneError("output holds checkpoints of an unfinished run: continue it with "
                             f"--resume-from-checkpoint {out}, or pass --overwrite to start again", out)


def check_resume(state: dict, settings: dict, folder: Path) -> None:
    """A resumed run must train the same thing the interrupted one did."""
    old = state["settings"]
    if old["base_model"]["id"] != settings["base_model"]["id"] or (
        old["base_model"]["weights_sha256"] and settings["base_model"]["weights_sha256"]
        and old["base_model"]["weights_sha256"] != settings["base_model"]["weights_sha256"]
    ):
        raise CachetuneError(f"checkpoint was trained on base model '{old['base_model']['id']}', not "
                             f"'{settings['base_model']['id']}' (--base-model)", folder)
    if old["domain"] != settings["domain"]:
        raise CachetuneError(f"checkpoint was trained for domain '{old['domain']}', not '{settings['domain']}'",
                             folder)
    if old["data_sha256"] != settings["data_sha256"]:
        raise CachetuneError("--train-data is not the file the checkpoint was trained on (sha256 differs)", folder)
    if old["world_size"] != settings["world_size"]:
        raise CachetuneError(f"checkpoint was trained on {old['world_size']} process(es), this run has "
                             f"{settings['world_size']}", folder)
    for key, option in RESUME_OPTIONS.items():
        # Checkpoints older than an option were trained as if it had its legacy value.
        was = old["hyperparameters"].get(key, LEGACY_VALUES.get(key))
        now = settings["hyperparameters"][key]
        if was != now:
            if isinstance(now, bool):  # a flag: name the setting, then the flag that flips it
                raise CachetuneError(f"checkpoint was trained with {key}={was}, not {now} ({option})", folder)
            raise CachetuneError(f"checkpoint was trained with {option} {was}, not {now}", folder)
