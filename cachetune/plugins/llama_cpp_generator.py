"""The ``llama-cpp`` generator backend: a local GGUF chat model through llama-cpp-python, on CPU.

The offline default. What makes it fast is measured in ``bench/generate.py`` (this default
against the previous one, through the whole generate stage) and ``bench/generate_options.py``
(the options one by one):

- batched decoding (``parallel``, default 16): each instance decodes several requests together
  in one llama.cpp batch, one sequence per request in one context, as llama.cpp's own server
  does with parallel slots (:mod:`cachetune.plugins.llama_cpp_batch`); one step reads the
  weights once for every sequence. On these 2-core AVX2 machines decoding the 0.5B model is
  bound by arithmetic more than by reading weights (10.9 / 11.3 / 12.5 tokens per CPU-second at
  4 / 8 / 16 sequences), so batching adds 10-20%; most of the gain is the grammar check below.
  Each request keeps its own sampler and seed; ``-o parallel 1`` answers one request at a time
  through ``create_chat_completion``;
- every request of a run shares one long few-shot prefix (see
  :func:`cachetune.core.generate.prompting.build_conversation`), whose KV cache is reused, so
  only the query and the reply are evaluated per request;
- replies are constrained by a JSON-schema grammar (exactly ``n`` non-empty strings), so
  the model neither rambles past the object nor returns something unparseable; batched, the
  grammar is checked on each sampled token and applied to the whole vocabulary only when that
  token breaks it, as llama.cpp's server does (``-o grammar_first true``: always applied first);
- threads: llama.cpp's threads spin at barriers, so more threads than free cores (SMT
  siblings, cores other jobs use) is many times slower; the default ``n_threads`` is the
  physical cores.
- instances: ``concurrency`` ``Llama`` instances answer requests in threads (llama.cpp
  releases the GIL; the weights are one shared mmap), each with ``n_threads / concurrency``
  threads. The default is one single-threaded instance per physical core, at most 4. One
  instance on both cores decoding 8 sequences can be faster once its prefix is cached, but its
  two threads wait for each other at every barrier: with other jobs on the cores a whole run,
  prefix included, took x2.2 as long (README, How triplets are generated);
- requests are taken from a feed as slots free (``generate_fed``): the pipeline asks for a
  query's negatives first and puts its paraphrase request in the feed once a negative could
  pass, while the instances decode the others; replies are handed over as they finish, so each
  query is written as soon as its replies are in, and a batch holds 4 queries per slot: slots
  refill as replies finish instead of waiting at the end of a batch for its longest reply;
- ``prefill``: batched, each reply starts with its JSON opening (``{"negatives": ["``),
  evaluated with the prompt in one step instead of sampled token by token (5-6 of a reply's
  ~30 tokens); the grammar and the repeat penalty see it as if sampled, and the reply text
  keeps it, so parsing is unchanged.

``model`` is a .gguf path (default: the Qwen2.5-Coder-0.5B GGUF in ``~/.cache/cachetune/gguf``,
fetched there from the model hub on first use where the hub is reachable); the options it
declares are in :data:`OPTIONS`.
"""

from __future__ import annotations

import os
import queue
import threading
from functools import partial
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from cachetune import BackendOption, hookimpl
from cachetune.core.errors import CachetuneError
from cachetune.core.generate.backends import backend_options
from cachetune.core.generate.feed import RequestFeed
from cachetune.core.generate.prompting import GenerationResult, Request

NAME = "llama-cpp"
DEFAULT_GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
DEFAULT_GGUF_REPO = "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF"


def default_model_path() -> Path:
    """Where the default GGUF lives: ``$GGUF_CACHE``, else ``~/.cache/cachetune/gguf``."""
    cache = os.environ.get("GGUF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cachetune", "gguf")
    return Path(cache) / DEFAULT_GGUF


def resolve_model(model: Optional[str]) -> Path:
    if model:
        path = Path(os.path.expanduser(model))
        if not path.is_file():
            raise CachetuneError("--model: GGUF file not found", model)
        return path
    path = default_model_path()
    if not path.is_file():
        fetch_default_model(path)
    return path


def fetch_default_model(path: Path) -> None:
    """Download the default GGUF from the model hub into ``path``'s folder, or fail in one line
    saying which file to place where (no hub: offline, ``HF_HUB_OFFLINE=1``, no network)."""
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(DEFAULT_GGUF_REPO, DEFAULT_GGUF, local_dir=str(path.parent))
    except Exception as exc:  # offline, unreachable, or no huggingface_hub: say what to do instead
        raise CachetuneError(
            f"no --model given, the default GGUF is not at {path}, and it could not be fetched from the hub "
            f"({DEFAULT_GGUF_REPO}: {type(exc).__name__}): place {DEFAULT_GGUF} there, or pass --model PATH.gguf"
        ) from None
    if not path.is_file():
        raise CachetuneError(f"the hub download of {DEFAULT_GGUF} did not leave a file at {path}")


MAX_DEFAULT_INSTANCES = 4
DEFAULT_PARALLEL = 16

OPTIONS = (
    BackendOption("n_threads", int, None, "CPU threads in all (default: the physical cores)."),
    BackendOption("concurrency", int, None, "model instances answering in threads (default: one per "
                                            "physical core, at most 4)."),
    BackendOption("parallel", int, DEFAULT_PARALLEL, "requests each instance decodes together in one llama.cpp "
                                                     "batch (1: one at a time, through create_chat_completion)."),
    BackendOption("n_ctx", int, 2048, "context window in tokens."),
    BackendOption("json_schema", bool, True, "constrain replies with a JSON-schema grammar."),
    BackendOption("prefill", bool, False, "batched decoding: start each reply with its JSON opening "
                                          "('{\"paraphrases\": [\"'), evaluated with the prompt instead of "
                                          "sampled token by token."),
    BackendOption("grammar_first", bool, False, "batched decoding: match every candidate token against the "
                                                "grammar before sampling (default: check the sampled token, "
                                                "as llama.cpp's server does)."),
    # 1.1 is llama.cpp server's default; with it the model copies the query (the last tokens it
    # saw) less: 58 triplets from 30 CoNaLa queries instead of 35 (see the report).
    BackendOption("repeat_penalty", float, 1.1, "penalty for repeating recent tokens."),
)


def default_threads() -> int:
    """The physical cores: llama.cpp's threads spin at barriers, so SMT siblings only slow it down."""
    from cachetune.core.train.runtime import physical_cores

    return physical_cores()


class LlamaCppGenerator:
    """Answers requests with ``workers`` llama.cpp instances (one per thread)."""

    def __init__(self, options: dict):
        opts = backend_options(options, OPTIONS)
        self.path = resolve_model(opts["model"])
        self.label = f"{NAME}:{self.path.stem}"
        self.temperature = float(opts["temperature"])
        self.max_tokens = int(opts["max_tokens"])
        self.json_schema = bool(opts["json_schema"])
        self.grammar_first = bool(opts["grammar_first"])
        self.prefill = bool(opts["prefill"])
        self.repeat_penalty = float(opts["repeat_penalty"])
        # Here concurrency counts model instances (see the module docstring).
        threads = int(opts["n_threads"] or default_threads())
        self.parallel = max(1, int(opts["parallel"]))
        self.workers = max(1, int(opts["concurrency"] or min(threads, MAX_DEFAULT_INSTANCES)))
        self.threads_per_worker = max(1, threads // self.workers)
        # Queries per batch (one or two requests each). Each query is written once its replies are
        # in (generate_fed), so a batch may be long: batched, 4 queries per slot, so slots refill
        # while long replies finish and rarely wait at the end of a batch for the last one; one at
        # a time, one request per instance.
        slots = self.workers * self.parallel
        self.batch_size = max(1, 4 * slots if self.parallel > 1 else (slots + 1) // 2)
        self.n_ctx = int(opts["n_ctx"])
        self._llamas: List[object] = []
        self._decoders: List[object] = []  # one BatchDecoder per instance when parallel > 1
        self._formatter = None
        self._grammars: dict = {}
        self._grammar_lock = threading.Lock()
        self._running: List[threading.Event] = []  # one per worker of the generate() in progress
        self._stop = threading.Event()  # set: that generate()'s workers stop

    def _load(self):
        if self._llamas:
            return
        try:
            from llama_cpp import Llama
        except ImportError:
            raise CachetuneError(
                "the llama-cpp backend needs llama-cpp-python: pip install 'cachetune[local]'") from None
        for _ in range(self.workers):
            try:
                self._llamas.append(Llama(model_path=str(self.path), n_ctx=self.n_ctx, verbose=False,
                                          n_threads=self.threads_per_worker,
                                          n_threads_batch=self.threads_per_worker))
            except Exception as exc:  # llama.cpp says little more than "failed to load"
                raise CachetuneError(f"llama.cpp could not load the model: {exc}", self.path) from None
        if self.parallel > 1:
            from cachetune.plugins.llama_cpp_batch import BatchDecoder

            self._formatter = chat_formatter(self._llamas[0], self.path)
            try:
                self._decoders = [BatchDecoder(llama, self.parallel, self.n_ctx, self.threads_per_worker,
                                               self.temperature, self.repeat_penalty,
                                               grammar_first=self.grammar_first) for llama in self._llamas]
            except ValueError as exc:  # "Failed to create llama_context": out of memory for the KV cache
                raise CachetuneError(f"llama.cpp could not make a context for {self.parallel} parallel "
                                     f"sequences of {self.n_ctx} tokens: {exc} (lower -o parallel or -o n_ctx)",
                                     self.path) from None

    def _grammar(self, request: Request):
        key = (request.kind, request.n)
        with self._grammar_lock:
            if key not in self._grammars:
                import json

                from llama_cpp import LlamaGrammar

                self._grammars[key] = LlamaGrammar.from_json_schema(json.dumps(request.schema), verbose=False)
            return self._grammars[key]

    def _answer(self, llama, request: Request) -> GenerationResult:
        try:
            reply = llama.create_chat_completion(
                messages=request.conversation, temperature=self.temperature, max_tokens=self.max_tokens,
                seed=request.seed, grammar=self._grammar(request) if self.json_schema else None,
                repeat_penalty=self.repeat_penalty,
            )
        except ValueError as exc:  # e.g. the prompt exceeds n_ctx: this request only
            return GenerationResult(None, error=f"request_failed: {exc}")
        usage = reply.get("usage") or {}
        return GenerationResult(reply["choices"][0]["message"].get("content"),
                                usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))

    def _job(self, index: int, request: Request):
        from cachetune.plugins.llama_cpp_batch import Job

        llama = self._llamas[0]
        chat = self._formatter(messages=request.conversation)
        prompt = llama.tokenize(chat.prompt.encode("utf-8"), add_bos=not chat.added_special, special=True)
        opening = []
        if self.prefill:
            opening = llama.tokenize(reply_opening(request.kind).encode("utf-8"), add_bos=False, special=False)
        return Job(prompt + opening, request.seed, self._grammar(request) if self.json_schema else None,
                   max(1, self.max_tokens - len(opening)), index=index, opening=opening)

    def _batched_tasks(self, feed: RequestFeed, answered: "queue.Queue") -> list:
        """One task per instance: its decoder takes the next job when a slot frees."""
        from cachetune.plugins.llama_cpp_batch import WAIT, Job

        lock = threading.Lock()

        def next_job():
            with lock:
                taken = feed.take()
                if taken is None or taken is feed.WAIT:
                    return None if taken is None else WAIT
                return self._job(*taken)

        def finished(job: Job) -> None:
            answered.put((job.index, GenerationResult(job.text, len(job.prompt), job.completion_tokens, job.error)))

        return [lambda stop, d=d: d.run(next_job, stop.is_set, finished, idle=lambda: feed.wait(0.1))
                for d in self._decoders]

    def _single_tasks(self, feed: RequestFeed, answered: "queue.Queue") -> list:
        """One task per instance: it answers one request at a time through create_chat_completion."""

        def answer(llama, stop: threading.Event) -> None:
            while not stop.is_set():
                taken = feed.take()
                if taken is None:
                    return
                if taken is feed.WAIT:
                    feed.wait(0.1)
                    continue
                index, request = taken
                answered.put((index, self._answer(llama, request)))

        return [partial(answer, llama) for llama in self._llamas]

    def generate(self, requests: Sequence[Request]) -> List[GenerationResult]:
        results: List[Optional[GenerationResult]] = [None] * len(requests)
        for index, result in self.generate_each(requests):
            results[index] = result
        return results  # type: ignore[return-value]

    def generate_each(self, requests: Sequence[Request]) -> Iterator[Tuple[int, GenerationResult]]:
        """``(index, result)`` for each request as soon as it is answered (the pipeline then
        writes each query once both its replies are in)."""
        return self.generate_fed(RequestFeed(requests, closed=True))

    def generate_fed(self, feed: RequestFeed) -> Iterator[Tuple[int, GenerationResult]]:
        """``(index, result)`` for each request of ``feed`` as soon as it is answered; requests
        added while it runs go to the next free instance or slot."""
        self._load()
        answered: "queue.Queue" = queue.Queue()
        tasks = (self._batched_tasks if self.parallel > 1 else self._single_tasks)(feed, answered)
        yield from self._run_workers(tasks, answered, feed)

    def _run_workers(self, tasks, answered: "queue.Queue", feed: RequestFeed) -> Iterator[Tuple[int, GenerationResult]]:
        """Run each ``task(stop)`` in a thread of its own, yielding the results they put on
        ``answered`` as they come, until ``feed`` is closed and every request in it answered.

        Ctrl-C (or the caller dropping this iterator) sets ``stop``, which tasks check between
        requests (or decoding steps), waits for them and hands the interrupt on; a task's
        exception is raised here once all have stopped.
        """
        failures: list = []
        stop = self._stop = threading.Event()

        def work(task, finished: threading.Event):
            try:
                task(stop)
            except BaseException as exc:  # surfaced in the calling thread below
                failures.append(exc)
                stop.set()
            finally:
                finished.set()

        # Completion is tracked with events, not Thread.join: a join interrupted by Ctrl-C can
        # leave the thread marked finished while it still runs (CPython 3.11), and close() would
        # then free a model in use (llama.cpp aborts with GGML_ASSERT(backend) or segfaults).
        self._running = [threading.Event() for _ in tasks]
        for task, finished in zip(tasks, self._running):
            threading.Thread(target=work, args=(task, finished), daemon=True).start()
        count = 0
        try:
            while not (feed.closed and count == len(feed)):
                try:
                    item = answered.get(timeout=0.1)
                except queue.Empty:
                    if all(finished.is_set() for finished in self._running) and answered.empty():
                        break  # stopped by a failure
                    continue
                count += 1
                yield item
        except BaseException:  # Ctrl-C, or the consumer closed this generator
            stop.set()
            self._wait_idle()
            raise
        stop.set()  # workers waiting for a request that will not come
        self._wait_idle()
        if failures:
            raise failures[0]

    def _wait_idle(self) -> None:
        """Block until no worker is answering a request (a further Ctrl-C only restarts the wait)."""
        for finished in self._running:
            while True:
                try:
                    if finished.wait(0.1):
                        break
                except KeyboardInterrupt:
                    continue

    def close(self) -> None:
        # Ctrl-C may come while the caller writes a query, between two results: the workers
        # still run and are stopped here.
        self._stop.set()
        self._wait_idle()
        for decoder in self._decoders:
            decoder.close()
        self._decoders = []
        for llama in self._llamas:
            close = getattr(llama, "close", None)
            if close is not None:
                close()
        self._llamas = []


def reply_opening(kind: str) -> str:
    """What every reply of ``kind`` starts with: the few-shot examples' ``json.dumps`` layout."""
    return '{"' + kind + '": ["'


def chat_formatter(llama, path: Path):
    """The GGUF's own chat template, as ``Llama.create_chat_completion`` applies it."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        raise CachetuneError("batched decoding needs a GGUF with a chat template (tokenizer.chat_template); "
                             "use -o parallel 1", path)
    eos, bos = llama.token_eos(), llama.token_bos()
    return Jinja2ChatFormatter(template=template, stop_token_ids=[eos],
                               eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
                               bos_token=llama._model.token_get_text(bos) if bos != -1 else "")


def create(options: dict) -> LlamaCppGenerator:
    return LlamaCppGenerator(options)


# tryfirst: a built-in keeps its names unless a plugin's hook is tryfirst too (core/plugin_manager.py)
@hookimpl(tryfirst=True)
def register_generators(register):
    register(NAME, create, OPTIONS)
