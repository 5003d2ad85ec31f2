"""The main job: prepare -> generate -> train -> evaluate -> register, resumable.

Each stage writes into the work folder and records, in ``run.json``, a fingerprint of its
own options and of the outputs it read, both when it starts and when it completes. On a
rerun a stage is skipped when its completed fingerprint matches and its outputs are still
there. A stage that crashed under the same fingerprint resumes (generation appends per
query, training has checkpoints). A stage whose options or inputs changed never mixes old
and new outputs: its output folder is moved aside to ``stale/<stage>-<time>/`` (named in
the log) and it starts afresh; the stages after it follow, since their inputs changed.

Work folder layout::

    data/{train,holdout}.jsonl, prepare.json     prepare
    triplets/train.jsonl, triplets/holdout.jsonl  generate (holdout triplets are for evaluation only)
    adapter/                                     train (peft files + cachetune.json)
    eval/metrics.json, report.md, *.png          evaluate
    run.json                                     stage fingerprints, timings, summaries
    stale/<stage>-<time>/                        outputs made under other options, moved aside
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, Optional

from cachetune.core.errors import CachetuneError
from cachetune.core.jsonl import write_json
from cachetune.core.outputs import check_output

STAGES = ("prepare", "generate", "train", "evaluate", "register")
STATE_FILE = "run.json"
STALE_DIR = "stale"
Log = Callable[[str], None]


# Train options added after work folders existed, with the value every earlier version trained
# with: at that value an option stays out of the train fingerprint, so a folder trained before
# the option existed is still up to date.
NEWER_TRAIN_OPTIONS = {"pair_loss_weight": 0.0}


def _fingerprint(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    from cachetune.core.models import sha256_file

    return sha256_file(path)[:16] if Path(path).exists() else "missing"


class RunState:
    """``run.json``: what each stage last completed with."""

    def __init__(self, workdir: Path):
        self.path = workdir / STATE_FILE
        self.data: Dict[str, dict] = {}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8")).get("stages", {})
            except (UnicodeDecodeError, json.JSONDecodeError):
                self.data = {}  # a torn state file only costs re-checking the stages

    def done(self, stage: str, fingerprint: str, outputs) -> bool:
        entry = self.data.get(stage)
        return bool(entry and entry.get("fingerprint") == fingerprint and all(Path(p).exists() for p in outputs))

    def start(self, stage: str, fingerprint: str) -> Optional[str]:
        """Record that ``stage`` starts under ``fingerprint``; returns the fingerprint it last
        started under (``None``: never), which tells a crash to resume from a change of options."""
        entry = self.data.setdefault(stage, {})
        previous = entry.get("started")
        entry["started"] = fingerprint
        write_json(self.path, {"stages": self.data})
        return previous

    def record(self, stage: str, fingerprint: str, wall_s: float, summary: dict) -> None:
        self.data[stage] = {"fingerprint": fingerprint, "started": fingerprint, "wall_time_s": round(wall_s, 1),
                            "summary": summary, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(self.path, {"stages": self.data})


class Pipeline:
    """Runs the stages for one resolved config (see :mod:`cachetune.core.pipeline.config`)."""

    def __init__(self, pm, config: dict, log: Log = print, progress: bool = True):
        self.pm, self.config, self.log, self.progress = pm, config, log, progress
        self.domain = pm.get_domain(config["domain"])
        self.workdir = Path(config["run"]["workdir"])
        self.seed = config["run"]["seed"]
        self.base_model = config["run"]["base_model"]
        self.state = RunState(self.workdir)
        self.timings: Dict[str, float] = {}
        self.skipped: Dict[str, bool] = {}
        # Checked now, before any stage runs or model loads: an unknown backend or option is one line.
        self.backend, self.backend_options = self._backend()
        check_output(self.workdir, "--workdir", folder=True, overwrite=True)  # the run's own folder
        for pairs in config["evaluate"]["pairs"] or []:  # found missing now, not after training
            if not Path(pairs).is_file():
                raise CachetuneError("pairs file not found (evaluate.pairs)", pairs)

    def _backend(self):
        from cachetune.core.generate.backends import backend_settings

        opts = self.config["generate"]
        generators = self.pm.generators()
        if opts["backend"] not in generators:
            raise CachetuneError(f"generate.backend: unknown backend '{opts['backend']}' "
                                 f"(registered: {', '.join(sorted(generators))})")
        if not isinstance(opts["options"] or {}, dict):
            raise CachetuneError(f"generate.options must be a mapping of option: value, got {opts['options']!r}")
        backend = generators[opts["backend"]].value
        generic = {"model": opts["model"], "temperature": opts["temperature"], "max_tokens": opts["max_tokens"],
                   "seed": self.seed}
        return backend, backend_settings(backend, generic, opts["options"])

    # -- paths ------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def triplets(self, split: str) -> Path:
        return self.workdir / "triplets" / f"{split}.jsonl"

    @property
    def adapter_dir(self) -> Path:
        return self.workdir / "adapter"

    @property
    def eval_dir(self) -> Path:
        return self.workdir / "eval"

    # -- stages -----------------------------------------------------------------------
    def run(self, stop_after: Optional[str] = None) -> dict:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for number, stage in enumerate(STAGES, 1):
            if stage == "register" and not self.config["register"]["enabled"]:
                continue
            getattr(self, f"stage_{stage}")(number)
            if stage == stop_after:
                break
        return self.summary()

    def _stage(self, number: int, stage: str, fingerprint: str, outputs, work: Callable[[], dict],
               folder: Optional[Path] = None) -> dict:
        """Run ``work`` unless its outputs are up to date; ``folder`` holds everything the
        stage writes and is moved aside when it was written under another fingerprint."""
        label = f"[{number}/{len(STAGES)}] {stage}"
        if self.state.done(stage, fingerprint, outputs):
            self.skipped[stage] = True
            self.timings[stage] = self.state.data[stage].get("wall_time_s", 0.0)
            self.log(f"{label}: up to date, skipped")
            return self.state.data[stage]["summary"]
        products = self._products(stage)
        made_before = [_file_digest(p) for p in products]
        previous = self.state.start(stage, fingerprint)
        if folder is not None and folder.exists() and any(folder.iterdir()):
            if previous == fingerprint:
                self.log(f"{label}: resuming {folder.name}/ (same options and inputs as the interrupted run)")
            else:
                moved = self._move_aside(stage, folder)
                self.log(f"{label}: options or inputs changed since {folder.name}/ was written: "
                         f"moved it to {moved}")
        self.log(f"{label}: running")
        started = time.time()
        summary = work()
        wall = time.time() - started
        self.state.record(stage, fingerprint, wall, summary)
        if [_file_digest(p) for p in products] != made_before:
            self._drop_later_stages(stage)
        self.timings[stage], self.skipped[stage] = wall, False
        self.log(f"{label}: done in {wall:.1f} s")
        return summary

    def _products(self, stage: str) -> list:
        """The files of ``stage`` that the later stages read (and fingerprint)."""
        return {"prepare": [self.data_dir / "train.jsonl", self.data_dir / "holdout.jsonl"],
                "generate": [self.triplets("train"), self.triplets("holdout")],
                "train": [self.adapter_dir / "adapter_model.safetensors"],
                "evaluate": [self.eval_dir / "metrics.json"]}.get(stage, [])

    def _drop_later_stages(self, stage: str) -> None:
        """``stage`` changed its products: what the later stages made from the old ones is stale.
        Their records go (a `--stop-after` run does not report another run's adapter) and their
        folders are moved aside now, so the work folder never holds an adapter of other data."""
        folders = {"generate": self.triplets("train").parent, "train": self.adapter_dir, "evaluate": self.eval_dir}
        for later in STAGES[STAGES.index(stage) + 1:]:
            self.state.data.pop(later, None)
            folder = folders.get(later)
            if folder is not None and folder.exists() and any(folder.iterdir()):
                moved = self._move_aside(later, folder)
                self.log(f"{stage} changed its outputs: {folder.name}/ was made from the old ones: moved it to {moved}")
        write_json(self.state.path, {"stages": self.state.data})

    def _move_aside(self, stage: str, folder: Path) -> Path:
        stale = self.workdir / STALE_DIR
        stale.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target, n = stale / f"{stage}-{stamp}", 1
        while target.exists():
            n += 1
            target = stale / f"{stage}-{stamp}-{n}"
        shutil.move(str(folder), str(target))
        return target

    def stage_prepare(self, number: int) -> dict:
        from cachetune.core.data.prepare import STATS_FILE, prepare

        opts = self.config["prepare"]
        source = opts["source"] or str(self.domain.default_source)
        source_digest = _file_digest(Path(source)) if Path(source).is_file() else source
        fp = _fingerprint(opts, source_digest, self.seed)

        def work():
            summary = prepare(self.domain, self.data_dir, source=source, limit=opts["limit"],
                              holdout=opts["holdout"], seed=self.seed, readers=self.pm.source_readers(),
                              query_field=opts["query_field"], group_field=opts["group_field"],
                              overwrite=True)  # the run's own folder
            return summary["counts"]

        return self._stage(number, "prepare", fp, [self.data_dir / STATS_FILE], work, folder=self.data_dir)

    def _generate(self, split: str, limit: Optional[int]) -> dict:
        from cachetune.core.generate.pipeline import GenerateConfig, generate_triplets
        from cachetune.core.generate.prompting import DomainRules

        opts = self.config["generate"]
        config = GenerateConfig(
            domain=self.domain.name, input=self.data_dir / f"{split}.jsonl", output=self.triplets(split),
            paraphrases=opts["paraphrases"], negatives=opts["negatives"], batch_size=opts["batch_size"],
            limit=limit, seed=self.seed, resume=True, mine_negatives=opts["mine_negatives"],
            mine_fallback=opts["mine_fallback"] and split == "train",  # held-out triplets stay LLM-only
            base_model=self.base_model, embedding_filter=opts["embedding_filter"], ask_together=opts["ask_together"],
        )
        progress = None
        if self.progress:
            from tqdm import tqdm

            progress = lambda total: tqdm(total=total, desc=f"generate {split}", unit=" queries",  # noqa: E731
                                          mininterval=1.0, leave=False, disable=None)
        return generate_triplets(config, self.pm.prompt_templates(self.domain.name),
                                 lambda: self.backend.factory(self.backend_options),
                                 default_base_model=self.domain.default_base_model, rules=DomainRules.of(self.domain),
                                 progress=progress, log=self.log,
                                 generator_options={"backend": self.backend.name, **self.backend_options})

    def stage_generate(self, number: int) -> dict:
        opts = self.config["generate"]
        inputs = [_file_digest(self.data_dir / f"{s}.jsonl") for s in ("train", "holdout")]
        # ask_together changes which requests are sent, not the triplets (see generate's made_by)
        fp = _fingerprint({k: v for k, v in opts.items() if k != "ask_together"}, inputs, self.base_model, self.seed)

        def work():
            train = self._generate("train", opts["limit"])
            held = self._generate("holdout", opts["holdout_limit"])
            keys = ("queries_done", "triplets_written", "rejected_total", "queries_per_s", "generator")
            return {"train": {k: train.get(k) for k in keys}, "holdout": {k: held.get(k) for k in keys}}

        return self._stage(number, "generate", fp, [self.triplets("train"), self.triplets("holdout")], work,
                           folder=self.triplets("train").parent)

    def stage_train(self, number: int) -> dict:
        from cachetune.core.adapters import CARD_FILE
        from cachetune.core.train.config import DEFAULT_LR, TrainConfig
        from cachetune.core.train.loop import train

        opts = dict(self.config["train"])
        opts["lr"] = opts["lr"] or DEFAULT_LR
        inputs = [_file_digest(Path(p)) for p in [self.triplets("train"), *opts["pairs"],
                                                   *(opts["training_sources"] or {}).values()]]
        fp = _fingerprint({k: v for k, v in opts.items() if NEWER_TRAIN_OPTIONS.get(k, object()) != v},
                          inputs, self.base_model, self.seed)
        modules = opts["target_modules"]
        if isinstance(modules, str):
            modules = tuple(m.strip() for m in modules.split(",") if m.strip())

        def work():
            from cachetune.core.train import checkpoints as ckpt

            resume = self.adapter_dir if (self.adapter_dir / ckpt.CHECKPOINTS_DIR).exists() else None
            config = TrainConfig(
                domain=self.domain.name, train_data=self._training_data(opts), output=self.adapter_dir,
                base_model=self.base_model, epochs=opts["epochs"], batch_size=opts["batch_size"], lr=opts["lr"],
                temperature=opts["temperature"], lora_r=opts["lora_r"], lora_alpha=opts["lora_alpha"],
                lora_dropout=opts["lora_dropout"], target_modules=tuple(modules),
                max_seq_length=opts["max_seq_length"], seed=self.seed, hard_negatives=opts["hard_negatives"],
                drop_inverted=opts["drop_inverted"], min_steps=opts["min_steps"], loss=opts["loss"],
                guide_filter=opts["guide_filter"],
                pair_loss_weight=opts["pair_loss_weight"], resume_from=resume, overwrite=resume is None,
            )
            info = self.pm.domain_plugin(self.domain.name)
            card = train(config, domain_plugin={"name": info.name, "package": info.package,
                                                "version": info.version},
                         log=self.log, show_progress=self.progress)
            return {"results": card.get("results", {}), "trainable_parameters": card.get("trainable_parameters"),
                    "sources": card.get("data", {}).get("sources", {}),
                    "adapter_bytes": adapter_size(self.adapter_dir)}

        return self._stage(number, "train", fp, [self.adapter_dir / CARD_FILE], work, folder=self.adapter_dir)

    def _training_data(self, opts: dict) -> Path:
        """The training file: the LLM triplets and every other source the config names, combined."""
        from cachetune.core.train.signal import assemble_training_data, select_training_sets

        output = self.workdir / "triplets" / "training.jsonl"
        sources = opts["training_sources"] or {}
        if not isinstance(sources, dict):
            raise CachetuneError(f"train.training_sources must be a mapping of set name: file, got {sources!r}")
        assemble_training_data(
            self.domain, output, triplets=[self.triplets("train")] if opts["llm_triplets"] else [],
            training_sets=select_training_sets(self.pm.training_sets(self.domain.name), opts["training_sets"]),
            set_sources=sources, default_source=self.config["prepare"]["source"],
            pairs=[Path(p) for p in opts["pairs"] or []], data_dir=self.data_dir,
            evaluation_sets=self.pm.evaluation_sets(self.domain.name), base_model=self.base_model,
            relative_margin=opts["relative_margin"], seed=self.seed, log=self.log)
        return output

    def stage_evaluate(self, number: int) -> dict:
        from cachetune.core.evaluate.runner import evaluate

        opts = self.config["evaluate"]
        fp = _fingerprint(opts, _file_digest(self.adapter_dir / "adapter_model.safetensors"),
                          _file_digest(self.triplets("holdout")), _file_digest(self.data_dir / "train.jsonl"),
                          self.base_model)

        def work():
            sets = self.pm.evaluation_sets(self.domain.name) if opts["domain_sets"] else ()
            held = self.triplets("holdout")
            triplets = [held] if held.exists() and held.stat().st_size else []
            if not triplets:  # a weak generator can leave none: the human sets still say how good it is
                self.log(f"evaluate: {held} holds no triplets (the generator left none for the held-out "
                         "queries): evaluating on the other sets only")
            result = evaluate(
                self.domain, self.eval_dir, triplets=triplets, pairs=list(opts["pairs"]),
                holdout=self.data_dir, evaluation_sets=sets, eval_data=opts["eval_data"],
                seed=self.seed, base_model=self.base_model, adapter=str(self.adapter_dir),
                target_precision=opts["target_precision"], log=self.log,
            )
            return {"sets": {name: {m: entry.get(m) for m in ("base", "adapter") if m in entry}
                             for name, entry in result["sets"].items()},
                    "improvement": result.get("improvement", {})}

        return self._stage(number, "evaluate", fp, [self.eval_dir / "metrics.json"], work, folder=self.eval_dir)

    def stage_register(self, number: int) -> dict:
        from cachetune.core.evaluate.runner import registry_summary
        from cachetune.registry import AdapterRegistry

        opts = self.config["register"]
        registry = AdapterRegistry(opts["registry"])
        fp = _fingerprint(opts, str(registry.root), _file_digest(self.adapter_dir / "adapter_model.safetensors"),
                          _file_digest(self.eval_dir / "metrics.json"))

        def work():
            record = registry.add(self.adapter_dir, name=opts["name"])
            ref = f"{record['name']}@{record['version']}"
            metrics = json.loads((self.eval_dir / "metrics.json").read_text(encoding="utf-8"))
            registry.update_metrics(ref, registry_summary(metrics, self.eval_dir))
            return {"ref": ref, "registry": str(registry.root)}

        summary = self._stage(number, "register", fp, [], work)
        # A registry emptied by hand since the last run means registering again.
        try:
            registry.get(summary["ref"])
        except CachetuneError:
            self.state.data.pop("register", None)
            summary = self._stage(number, "register", fp, [], work)
        return summary

    # -- summary ----------------------------------------------------------------------
    def summary(self) -> dict:
        stages = self.state.data
        out = {"domain": self.domain.name, "workdir": str(self.workdir), "timings_s": dict(self.timings),
               "skipped": dict(self.skipped), "stages": stages}
        if self.adapter_dir.exists():
            out["adapter_bytes"] = adapter_size(self.adapter_dir)
        return out


def adapter_size(adapter_dir: Path) -> int:
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    return weights.stat().st_size if weights.exists() else 0


def summary_rows(summary: dict) -> list:
    """Rows of (set, metric, base, adapter) for the final table."""
    rows = []
    evaluation = summary["stages"].get("evaluate", {}).get("summary", {})
    for name, entry in evaluation.get("sets", {}).items():
        for kind, metrics in (("triplets", ("margin", "accuracy")), ("pairs", ("ap", "calibrated_threshold",
                                                                                "hit_rate", "false_hit_rate"))):
            base = entry.get("base", {}).get(kind)
            adapter = entry.get("adapter", {}).get(kind)
            if not base:
                continue
            for metric in metrics:
                rows.append((name, metric, base.get(metric), (adapter or {}).get(metric)))
    return rows
