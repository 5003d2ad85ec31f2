"""Batched decoding for the ``llama-cpp`` backend: several requests in one llama.cpp context.

One context holds up to ``slots`` sequences (``n_seq_max``), as llama.cpp's own server does with
parallel slots. Every step decodes one llama.cpp batch holding, for each busy slot, either the
next chunk of its prompt or the token it sampled last; each slot then samples its next token
from its own logits with its own sampler chain (repeat penalty, top-k/typical/top-p/min-p,
temperature, and the request's own seed), the chain ``Llama.create_chat_completion`` builds,
held to the request's JSON-schema grammar. A finished slot takes the next waiting request at
once, so slots do not idle while a long reply finishes.

The grammar is checked on the token the chain samples, and applied to the whole vocabulary
only when that token breaks it (then the chain samples again from what the grammar allows), as
llama.cpp's own server does: matching 150k candidate tokens against the grammar at every step
cost more than the decoding itself (``bench/generate_options.py``, "grammar first").
``grammar_first=True`` applies it to every candidate first, as ``create_chat_completion`` does.

CPU decoding of a small model is bound by reading its weights once per step, whatever the number
of sequences in the batch, so each step yields one token per busy slot for little more than
the cost of one.

The KV cache is unified: a new request's prompt reuses the longest prefix any slot already
holds (every request of a run shares a long few-shot prefix), copied by reference with
``llama_memory_seq_cp``, so only the query and the reply are evaluated per request.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

# llama-cpp-python's create_completion defaults, which the unbatched path uses.
TOP_K, TOP_P, MIN_P, TYPICAL_P, PENALTY_LAST_N = 40, 0.95, 0.05, 1.0, 64
# A prompt with more tokens than this left to evaluate holds back the next requests (see run()).
PREFIX_WAIT = 64
# What ``next_job`` returns when no job is waiting yet but more may come.
WAIT = "wait"


@dataclass
class Job:
    """One request: prompt tokens in, reply text and token counts out."""

    prompt: List[int]
    seed: int
    grammar: object  # a LlamaGrammar, or None
    max_tokens: int
    index: int = 0  # the caller's
    # The reply's opening, already at the end of ``prompt``: sampled as if generated (the grammar
    # and the repeat penalty see it) and put back before the reply text.
    opening: List[int] = field(default_factory=list)
    text: Optional[str] = None
    completion_tokens: int = 0
    error: Optional[str] = None


@dataclass
class _Slot:
    seq: int
    cached: List[int] = field(default_factory=list)  # tokens whose KV this sequence holds
    job: Optional[Job] = None
    pending: List[int] = field(default_factory=list)  # tokens to decode next
    sampler: object = None
    generated: List[int] = field(default_factory=list)


class Candidates:
    """A reusable llama_token_data_array over the whole vocabulary, filled from one row of logits."""

    def __init__(self, n_vocab: int):
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.n_vocab = n_vocab
        self.ids = np.arange(n_vocab, dtype=np.int32)
        self.data = np.zeros(n_vocab, dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)])
        self.one = np.zeros(1, dtype=self.data.dtype)

    def _array(self, data: np.ndarray):
        pointer = data.ctypes.data_as(self._llama_cpp.llama_token_data_p)
        return self._llama_cpp.llama_token_data_array(data=pointer, size=len(data), selected=-1, sorted=False)

    def sample(self, ctx, index: int, chain, grammar=None) -> int:
        """The token ``chain`` (a LlamaSampler) picks from row ``index`` of ``ctx``'s logits,
        after ``grammar`` (a LlamaSampler) masks the candidates it forbids, when given. Accepts nothing."""
        logits = self._llama_cpp.llama_get_logits_ith(ctx, index)
        self.data["id"] = self.ids
        self.data["logit"] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        array = self._array(self.data)
        if grammar is not None:
            self._llama_cpp.llama_sampler_apply(grammar.sampler, ctypes.byref(array))
        self._llama_cpp.llama_sampler_apply(chain.sampler, ctypes.byref(array))
        if array.selected < 0:
            raise RuntimeError("the sampler chain selected no token")
        return int(array.data[array.selected].id)

    def allows(self, grammar, token: int) -> bool:
        """Whether ``grammar`` (a LlamaSampler) accepts ``token`` next."""
        self.one[0] = (token, 1.0, 0.0)
        array = self._array(self.one)
        self._llama_cpp.llama_sampler_apply(grammar.sampler, ctypes.byref(array))
        return bool(np.isfinite(self.one[0]["logit"]))


@dataclass
class RequestSampler:
    """One request's sampling state: its sampler chain and, when constrained, its grammar."""

    chain: object  # LlamaSampler: penalties, top-k ... temperature, the request's seeded dist
    grammar: object  # LlamaSampler holding only the grammar, or None
    grammar_first: bool

    def sample(self, candidates: Candidates, ctx, index: int) -> int:
        """The next token, accepted by the chain (penalties) and the grammar."""
        if self.grammar is None:
            token = candidates.sample(ctx, index, self.chain)
        elif self.grammar_first:
            token = candidates.sample(ctx, index, self.chain, self.grammar)
        else:
            token = candidates.sample(ctx, index, self.chain)
            if not candidates.allows(self.grammar, token):
                token = candidates.sample(ctx, index, self.chain, self.grammar)
        self.chain.accept(token)
        if self.grammar is not None:
            self.grammar.accept(token)
        return token


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class BatchDecoder:
    """Decodes jobs ``slots`` at a time in one context of ``llama``'s model (a ``llama_cpp.Llama``)."""

    def __init__(self, llama, slots: int, n_ctx: int, n_threads: int, temperature: float,
                 repeat_penalty: float, n_batch: int = 512, grammar_first: bool = False):
        import llama_cpp
        from llama_cpp import _internals

        self.llama = llama
        self.slots = [_Slot(seq) for seq in range(slots)]
        self.temperature = temperature
        self.repeat_penalty = repeat_penalty
        self.n_batch = n_batch
        self.grammar_first = grammar_first
        self.candidates = Candidates(llama.n_vocab())
        self._finished: Callable[[Job], None] = lambda job: None
        params = llama_cpp.llama_context_params.from_buffer_copy(llama.context_params)
        # The cache is shared by all sequences: room for each one's own context window.
        params.n_ctx = n_ctx * slots
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = slots
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = n_threads
        self.n_ctx = n_ctx
        self.ctx = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=slots, verbose=False)
        self.vocab = llama._model.vocab
        self._llama_cpp = llama_cpp

    def close(self) -> None:
        for slot in self.slots:
            slot.sampler = None
        self.batch.close()
        self.ctx.close()

    # -- sampling --------------------------------------------------------------------
    def _sampler(self, job: Job):
        from llama_cpp import _internals

        grammar = None
        if job.grammar is not None:
            grammar = _internals.LlamaSampler()
            grammar.add_grammar(self.llama._model, job.grammar)
        sampler = _internals.LlamaSampler()
        sampler.add_penalties(self.llama.n_vocab(), PENALTY_LAST_N, self.repeat_penalty, 0.0, 0.0)
        if self.temperature == 0.0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(TOP_K)
            sampler.add_typical(TYPICAL_P, 1)
            sampler.add_top_p(TOP_P, 1)
            sampler.add_min_p(MIN_P, 1)
            sampler.add_temp(self.temperature)
            sampler.add_dist(job.seed & 0xFFFFFFFF)
        for token in job.opening:
            if grammar is not None and not self.candidates.allows(grammar, token):
                raise ValueError(f"the reply opening {self.llama.detokenize(job.opening)!r} breaks the grammar")
            sampler.accept(token)
            if grammar is not None:
                grammar.accept(token)
        return RequestSampler(sampler, grammar, self.grammar_first)

    # -- scheduling ------------------------------------------------------------------
    def _start(self, slot: _Slot, job: Job) -> None:
        """Give ``job`` to ``slot``, reusing the longest prompt prefix any slot holds."""
        prompt = job.prompt
        source = max(self.slots, key=lambda s: (_common_prefix(s.cached, prompt), s is slot))
        keep = min(_common_prefix(source.cached, prompt), len(prompt) - 1)  # one token left for logits
        memory = self.ctx.memory
        if source is slot:
            self._llama_cpp.llama_memory_seq_rm(memory, slot.seq, keep, -1)
        else:
            self._llama_cpp.llama_memory_seq_rm(memory, slot.seq, -1, -1)
            if keep:
                self._llama_cpp.llama_memory_seq_cp(memory, source.seq, slot.seq, 0, keep)
        slot.cached = list(prompt[:keep])
        slot.job, slot.pending, slot.generated = job, list(prompt[keep:]), []
        slot.sampler = self._sampler(job)

    def _finish(self, slot: _Slot, error: Optional[str] = None) -> None:
        job = slot.job
        job.completion_tokens = len(slot.generated)
        if error:
            job.error = error
            # what a failed decode left in this sequence's cache is unknown: forget it
            self._llama_cpp.llama_memory_seq_rm(self.ctx.memory, slot.seq, -1, -1)
            slot.cached = []
        else:
            job.text = self.llama.detokenize(job.opening + slot.generated).decode("utf-8", errors="ignore")
        slot.job, slot.sampler, slot.pending = None, None, []
        self._finished(job)

    def run(self, next_job: Callable[[], object], stop: Callable[[], bool] = lambda: False,
            finished: Callable[[Job], None] = lambda job: None, idle: Callable[[], None] = lambda: None) -> None:
        """Decode jobs taken from ``next_job()`` (None: no more; :data:`WAIT`: none yet) until all
        are done or ``stop()`` is true.

        Results land on the jobs; ``finished(job)`` is called as each one is done. Several
        decoders may share one ``next_job``. With every slot free and ``next_job()`` saying
        :data:`WAIT`, ``idle()`` is called: it should block until a job may have come.
        """
        self._finished = finished
        more = True
        while not stop():
            # A slot still evaluating a long prompt holds the prefix the next prompts share: they
            # start once it is in the cache, and copy it instead of evaluating it again.
            prefilling = any(len(slot.pending) > PREFIX_WAIT for slot in self.slots)
            waiting = False
            for slot in self.slots:
                while more and slot.job is None and not prefilling and not waiting:
                    job = next_job()
                    if job is None:
                        more = False
                    elif job is WAIT:
                        waiting = True
                    elif len(job.prompt) + 1 > self.n_ctx:
                        job.error = f"request_failed: the prompt is {len(job.prompt)} tokens, n_ctx is {self.n_ctx}"
                        finished(job)
                    else:
                        self._start(slot, job)
                        prefilling = len(slot.pending) > PREFIX_WAIT
            busy = [slot for slot in self.slots if slot.job is not None]
            if busy:
                self._step(busy)
            elif waiting:
                idle()
            else:
                return

    def _step(self, busy: List[_Slot]) -> None:
        """One llama_decode over every busy slot's next tokens, then one sample per slot that is due."""
        batch = self.batch.batch
        n, due = 0, []  # due: (slot, index of its logits in the batch)
        for slot in busy:
            room = self.n_batch - n
            if room <= 0:
                break
            chunk = slot.pending[:room]
            for i, token in enumerate(chunk):
                batch.token[n] = token
                batch.pos[n] = len(slot.cached) + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot.seq
                batch.logits[n] = False
                n += 1
            slot.cached.extend(chunk)
            del slot.pending[:len(chunk)]
            if not slot.pending:
                batch.logits[n - 1] = True
                due.append((slot, n - 1))
        batch.n_tokens = n
        code = self._llama_cpp.llama_decode(self.ctx.ctx, batch)
        if code != 0:  # 1: no room in the KV cache; others: a failed compute
            for slot in busy:
                self._finish(slot, error=f"request_failed: llama_decode returned {code}")
            return
        for slot, index in due:
            token = slot.sampler.sample(self.candidates, self.ctx.ctx, index)
            if self._llama_cpp.llama_vocab_is_eog(self.vocab, token):
                self._finish(slot)
                continue
            slot.generated.append(token)
            if len(slot.generated) >= slot.job.max_tokens or len(slot.cached) + 1 >= self.n_ctx:
                self._finish(slot)
            else:
                slot.pending = [token]
