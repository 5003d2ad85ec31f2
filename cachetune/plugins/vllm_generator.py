"""The ``vllm`` generator backend: vLLM's offline engine on GPUs (the reference recipe's setup).

``vllm.LLM(model=..., tensor_parallel_size=N)`` is built once; each batch of requests is one
``llm.chat(conversations, sampling_params)`` call (vLLM batches and schedules them itself, and
its automatic prefix caching evaluates the shared few-shot prefix once), with one
``SamplingParams(n=1, temperature, max_tokens, seed)`` per request so every request keeps its
own seed. A model whose tokenizer has no chat template is prompted through ``llm.generate``
with a plain rendering of the chat. With ``json_schema`` on, replies are constrained to the
request's JSON schema by vLLM's structured outputs (``StructuredOutputsParams`` in newer
releases, ``GuidedDecodingParams`` in older ones; neither present: plain prompting).

vLLM needs a GPU and cannot be installed on the CI machines: everything but the engine call --
prompts, batching, parsing, validation -- is the code path the other backends run in tests,
and the tests drive this module with an object that has vLLM's ``LLM`` interface.

``model`` is a hub id or folder (default Qwen/Qwen2.5-Coder-7B-Instruct); the options it
declares are in :data:`OPTIONS` (``-o tensor_parallel 4``).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

from cachetune import BackendOption, hookimpl
from cachetune.core.errors import CachetuneError
from cachetune.core.generate.backends import backend_options
from cachetune.core.generate.prompting import GenerationResult, Request, render_plain

NAME = "vllm"
DEFAULT_MODEL = "Qwen/Qwen2.5-Coder-7B-Instruct"

OPTIONS = (
    BackendOption("tensor_parallel", int, 1, "GPUs per model."),
    BackendOption("json_schema", bool, True, "constrain replies to the JSON schema (structured outputs)."),
    BackendOption("gpu_memory_utilization", float, None, "share of GPU memory vLLM may take (default vLLM's)."),
    BackendOption("max_model_len", int, None, "context length (default the model's)."),
)


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise CachetuneError("the vllm backend needs vLLM and a GPU: pip install 'cachetune[vllm]'") from None
    return vllm


class VllmGenerator:
    """Batched offline generation with one ``vllm.LLM``."""

    def __init__(self, options: dict, llm=None):
        opts = backend_options(options, OPTIONS)
        self.model = opts["model"] or DEFAULT_MODEL
        self.label = f"{NAME}:{self.model}"
        self.batch_size = 256  # one llm.chat call schedules all 512 requests on the GPU(s)
        self.tensor_parallel = int(opts["tensor_parallel"])
        if self.tensor_parallel < 1:
            raise CachetuneError(f"backend 'vllm': option 'tensor_parallel' must be >= 1, got {self.tensor_parallel}")
        self.temperature = float(opts["temperature"])
        self.max_tokens = int(opts["max_tokens"])
        self.seed = int(opts["seed"] or 0)
        self.json_schema = bool(opts["json_schema"])
        self.engine_options = {k: opts[k] for k in ("gpu_memory_utilization", "max_model_len") if opts[k]}
        self._llm = llm  # tests pass an object with vLLM's LLM interface
        self._use_chat: Optional[bool] = None

    def _engine(self):
        if self._llm is None:
            vllm = _import_vllm()
            self._llm = vllm.LLM(model=self.model, tensor_parallel_size=self.tensor_parallel, seed=self.seed,
                                 enable_prefix_caching=True, **self.engine_options)
        if self._use_chat is None:
            tokenizer = self._llm.get_tokenizer()
            self._use_chat = bool(getattr(tokenizer, "chat_template", None))
        return self._llm

    def _sampling_params(self, request: Request):
        import vllm.sampling_params as sp
        from vllm import SamplingParams

        extra = {}
        if self.json_schema:
            if hasattr(sp, "StructuredOutputsParams"):
                extra["structured_outputs"] = sp.StructuredOutputsParams(json=request.schema)
            elif hasattr(sp, "GuidedDecodingParams"):
                extra["guided_decoding"] = sp.GuidedDecodingParams(json=request.schema)
        return SamplingParams(n=1, temperature=self.temperature, max_tokens=self.max_tokens, seed=request.seed,
                              **extra)

    def generate(self, requests: Sequence[Request]) -> List[GenerationResult]:
        if not requests:
            return []
        llm = self._engine()
        params = [self._sampling_params(r) for r in requests]
        if self._use_chat:
            outputs = llm.chat([r.conversation for r in requests], sampling_params=params, use_tqdm=False)
        else:
            outputs = llm.generate([render_plain(r.conversation) for r in requests], sampling_params=params,
                                   use_tqdm=False)
        results = []
        for output in outputs:
            completion = output.outputs[0] if output.outputs else None
            if completion is None:
                results.append(GenerationResult(None, error="request_failed: no completion"))
                continue
            results.append(GenerationResult(completion.text, len(output.prompt_token_ids or ()),
                                            len(completion.token_ids or ())))
        return results

    def close(self) -> None:
        self._llm = None


def create(options: dict) -> VllmGenerator:
    return VllmGenerator(options)


# tryfirst: a built-in keeps its names unless a plugin's hook is tryfirst too (core/plugin_manager.py)
@hookimpl(tryfirst=True)
def register_generators(register):
    register(NAME, create, OPTIONS)
