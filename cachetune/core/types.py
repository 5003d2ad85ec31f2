"""Plain data types shared by the core and by plugins: domains, prompts, readers, evaluation sets.

This module must stay import-light (no torch): plugins import it at module load time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, FrozenSet, Iterator, Optional, Sequence, Tuple, Union


@dataclass(frozen=True)
class QueryRecord:
    """One raw query read from a source, before normalisation.

    ``origin`` says where it came from (``file.jsonl:12``, ``medquad/1_CancerGov_QA/x.xml``)
    so errors and outputs can point back at it; ``meta`` carries format-specific fields
    (CoNaLa ``rewritten_intent``, MedQuAD ``qtype``/``focus``).
    """

    query: Optional[str]
    origin: str = ""
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SourceReader:
    """Reads queries from one kind of source.

    ``detect(source)`` says whether this reader understands ``source`` (a path or a hub id);
    ``read(source, options)`` yields :class:`QueryRecord` and raises
    :class:`cachetune.core.errors.CachetuneError` (with file and line) on bad input.
    """

    name: str
    detect: Callable[[str], bool]
    read: Callable[[str, dict], Iterator[QueryRecord]]
    description: str = ""


@dataclass(frozen=True)
class FewShotExample:
    """A worked example shown to the LLM: a query, rewordings of it, and hard negatives."""

    query: str
    paraphrases: Sequence[str]
    negatives: Sequence[str]


@dataclass(frozen=True)
class PromptTemplates:
    """What the generator asks the LLM, per domain.

    ``paraphrase_instruction`` and ``negative_instruction`` are ``str.format`` templates with
    ``{n}`` (how many to write) and ``{query}``. The generator builds a few-shot chat from
    ``examples`` and asks for a strict JSON object ``{"paraphrases": [...]}`` or
    ``{"negatives": [...]}``.
    """

    system: str
    paraphrase_instruction: str
    negative_instruction: str
    examples: Sequence[FewShotExample] = ()
    # The embedding filter's defaults for this domain (cosine similarity to the query with the
    # base model); None means cachetune's own. Where good paraphrases and hard negatives score
    # depends on the domain, so a domain may tune them (``--paraphrase-floor`` etc. override).
    paraphrase_floor: Optional[float] = None
    negative_ceiling: Optional[float] = None


@dataclass(frozen=True)
class EvaluationContext:
    """What an evaluation set's loader may use to build its data.

    ``eval_data`` is the user's ``--eval-data`` (a path or hub id), ``None`` for the data the
    domain ships; ``holdout`` a prepared folder whose training queries the set must leave out.
    A loader reads nothing but these and its own package's files."""

    domain: str
    eval_data: Optional[str] = None
    holdout: Optional[Path] = None
    limit: Optional[int] = None
    seed: int = 0


@dataclass(frozen=True)
class EvaluationSet:
    """A named evaluation set: ``kind`` is ``"pairs"`` (rows with ``sentence1``,
    ``sentence2``, ``label``) or ``"triplets"`` (rows with ``anchor``, ``positive``,
    ``negative``). ``load(context)`` returns the rows, or ``None`` when its data is not
    available (the set is then skipped with a note).

    ``metrics(rows, scores)``, when given, adds the set's own metrics: it gets the rows and,
    per model, a dict of numpy arrays of cosine scores (``{"pair": ...}`` for pairs,
    ``{"pos": ..., "neg": ...}`` for triplets, in row order) and returns ``{name: number}``,
    reported under ``extra`` beside the standard metrics."""

    name: str
    kind: str
    load: Callable[[EvaluationContext], Optional[list]]
    description: str = ""
    metrics: Optional[Callable[[list, dict], dict]] = None


@dataclass(frozen=True)
class TrainingContext:
    """What a training set's loader may use to build its rows.

    ``source`` is the file the user named for this set (``--training-source NAME=FILE``), else the
    run's query source (``--source``), else ``None`` (the set's packaged data, if it ships any).
    ``data_dir`` is the prepared folder: a set must leave its held-out queries out.
    """

    domain: str
    source: Optional[str] = None
    explicit: bool = False  # ``source`` was named for this set: a file the set cannot read is an error
    data_dir: Optional[Path] = None
    limit: Optional[int] = None
    seed: int = 0


@dataclass(frozen=True)
class TrainingSet:
    """A named source of training signal for a domain: labelled pairs (human-written unless ``generator``).

    ``load(context)`` returns rows ``{"sentence1", "sentence2", "label"}`` -- label 1: the two
    texts ask the same thing (a cache hit is right), label 0: they do not (a hard negative for
    ``sentence1``) -- with an optional ``"group"`` (rows of one group, e.g. one Stack Overflow
    question, are never each other's negatives), or ``None`` when its data is not available (the
    set is then skipped with a note). ``sentence1`` is the incoming query, ``sentence2`` the
    cached one, as in the evaluation pairs. Rows must not touch the domain's evaluation data;
    cachetune drops any that share a text or a group with an evaluation pair all the same.
    """

    name: str
    load: Callable[[TrainingContext], Optional[list]]
    description: str = ""
    # Set when a model, not people, wrote the set's texts (e.g. "llama-cpp:qwen2.5-coder-0.5b-instruct-q4_k_m"):
    # its negatives are then checked like LLM triplets' (those the base model ranks above the
    # positive are dropped) and the triplets name that generator.
    generator: Optional[str] = None


@dataclass(frozen=True)
class Domain:
    """A domain of queries that gets its own adapter.

    ``default_source`` is what ``prepare`` reads when no ``--source`` is given (built-in
    domains ship a small sample file); ``readers`` are tried before the generic
    JSONL/CSV/TXT readers; ``min_chars``/``max_chars`` bound a useful query's length;
    ``group_field`` names the ``QueryRecord.meta`` field whose queries ``prepare`` keeps on
    one side of the split (``--group-field`` overrides it).
    """

    name: str
    description: str
    default_source: Union[str, Path]
    prompts: PromptTemplates
    readers: Sequence[SourceReader] = ()
    evaluation_sets: Sequence[EvaluationSet] = ()
    # Human training pairs the domain owns (used beside the LLM triplets; see TrainingSet).
    training_sets: Sequence[TrainingSet] = ()
    default_base_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    min_chars: int = 8
    max_chars: int = 400
    # Domain rules for judging generated text (cachetune's own rules are domain-neutral):
    # ``answer_pattern`` is a regular expression (searched, case-sensitive) that marks a
    # generated paraphrase or negative as an answer when it matches the item but not the query
    # (programming: a line of Python); ``filler_words`` are words that do not change what a
    # question asks, on top of cachetune's own ("how", "do", "the", ...): dropped from the
    # near-duplicate key and never counted as a shared topic word (programming: "python").
    answer_pattern: Optional[str] = None
    filler_words: FrozenSet[str] = frozenset()
    group_field: Optional[str] = None


# A generator factory takes the backend options (model, temperature, its declared options) and
# returns an object with ``generate(requests) -> list[GenerationResult]`` (see
# cachetune.core.generate.prompting.Generator).
GeneratorFactory = Callable[[dict], Any]

OPTION_TYPES = (int, float, bool, str)


@dataclass(frozen=True)
class BackendOption:
    """An option a generator backend declares: ``cachetune generate -o NAME VALUE`` and the run
    config's ``generate.options`` set it. ``type`` is ``int``, ``float``, ``bool`` or ``str``;
    ``default`` ``None`` means the backend decides (its ``help`` says how)."""

    name: str
    type: type
    default: Any = None
    help: str = ""


@dataclass(frozen=True)
class GeneratorBackend:
    """A registered backend: its name, its factory and the options it declares."""

    name: str
    factory: GeneratorFactory
    options: Tuple[BackendOption, ...] = ()

    def check(self) -> None:
        """Refuse malformed declarations (the plugin that registered them is then disabled)."""
        seen = set()
        for option in self.options:
            if not isinstance(option, BackendOption):
                raise ValueError(f"backend '{self.name}': options must be BackendOption, got {option!r}")
            if option.type not in OPTION_TYPES or not option.name.isidentifier() or option.name in seen:
                raise ValueError(f"backend '{self.name}': bad or repeated option {option!r}")
            seen.add(option.name)
