"""The ``transformers`` generator backend: any local causal LM through ``model.generate``.

Requests are rendered with the tokenizer's chat template (a plain rendering when it has none),
left-padded and generated ``concurrency`` at a time (default 8) in one batched ``generate``
call, on CUDA when available, else CPU. A ``.gguf`` path works too (transformers dequantises
it; needs the ``gguf`` package). Sampling draws each request's tokens from its own random
stream, seeded by the request's seed (temperature, then top-p 0.95, per row), so a request gets
the same reply alone or in any batch -- what resuming a run relies on.

``model`` (hub id, folder, or .gguf file) is required; the options it declares are in
:data:`OPTIONS`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence

from cachetune import BackendOption, hookimpl
from cachetune.core.errors import CachetuneError
from cachetune.core.generate.backends import backend_options
from cachetune.core.generate.prompting import GenerationResult, Request, render_plain

NAME = "transformers"

OPTIONS = (
    BackendOption("concurrency", int, 8, "sequences per generate() call."),
    BackendOption("device", str, None, "torch device (default cuda when available, else cpu)."),
)


def _dtype_keyword() -> str:
    """``dtype`` since transformers 4.56; older releases only know ``torch_dtype``."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


TOP_P = 0.95


def per_request_sampler(seeds: Sequence[int], temperature: float):
    """A logits processor that samples each row from its own seeded generator and leaves only the
    drawn token, so greedy decoding emits it: no row's draw depends on another row's.

    The draw is Gumbel-max (argmax of logits / temperature + Gumbel noise, over the top-p
    tokens): the same distribution as sampling, and a float difference of ~1e-6 between a row
    scored alone and in a padded batch flips it only when two tokens tie that closely, where an
    inverse-CDF draw over a flat distribution flips on any such difference.
    """
    import torch
    from transformers import LogitsProcessor

    class PerRequestSampler(LogitsProcessor):
        def __init__(self):
            self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

        def __call__(self, input_ids, scores):
            logits = scores.float().cpu() / temperature
            probs = torch.softmax(logits, dim=-1)
            ordered, order = torch.sort(probs, descending=True, dim=-1)
            # top-p: keep the smallest head whose mass reaches TOP_P (always the first token)
            outside_sorted = (torch.cumsum(ordered, dim=-1) - ordered) >= TOP_P
            outside = torch.zeros_like(outside_sorted).scatter(-1, order, outside_sorted)
            logits = logits.masked_fill(outside, float("-inf"))
            chosen = torch.empty(scores.shape[0], dtype=torch.long)
            for row, generator in enumerate(self.generators):
                uniform = torch.rand(logits.shape[-1], generator=generator).clamp_(1e-20, 1.0)
                chosen[row] = torch.argmax(logits[row] - torch.log(-torch.log(uniform)))
            out = torch.full_like(scores, float("-inf"))
            out[torch.arange(scores.shape[0], device=scores.device), chosen.to(scores.device)] = 0.0
            return out

    return PerRequestSampler()


class TransformersGenerator:
    """Batched ``generate`` over a causal LM loaded with transformers."""

    def __init__(self, options: dict):
        opts = backend_options(options, OPTIONS)
        if not opts["model"]:
            raise CachetuneError("the transformers backend needs --model (a hub id, a folder or a .gguf file)")
        self.model_name = str(opts["model"])
        self.label = f"{NAME}:{Path(self.model_name).stem if self.model_name.endswith('.gguf') else self.model_name}"
        self.micro_batch = max(1, int(opts["concurrency"]))
        self.batch_size = max(1, self.micro_batch // 2)  # queries: 2 requests each fill one generate()
        self.temperature = float(opts["temperature"])
        self.max_tokens = int(opts["max_tokens"])
        self.device = opts["device"]
        self._model = None
        self._tokenizer = None

    def _load(self):
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source, extra = self.model_name, {}
        if self.model_name.endswith(".gguf"):
            path = Path(os.path.expanduser(self.model_name))
            if not path.is_file():
                raise CachetuneError("--model: GGUF file not found", self.model_name)
            source, extra = str(path.parent), {"gguf_file": path.name}
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **extra)
            model = AutoModelForCausalLM.from_pretrained(source, **{_dtype_keyword(): dtype}, **extra)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CachetuneError(f"transformers could not load '{self.model_name}': {first}") from None
        tokenizer.padding_side = "left"  # generation continues on the right
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._tokenizer, self._model, self.device = tokenizer, model.to(device).eval(), device

    def _render(self, request: Request) -> str:
        if getattr(self._tokenizer, "chat_template", None):
            return self._tokenizer.apply_chat_template(request.conversation, tokenize=False, add_generation_prompt=True)
        return render_plain(request.conversation)

    def _generate_batch(self, requests: Sequence[Request]) -> List[GenerationResult]:
        import torch

        tokenizer = self._tokenizer
        inputs = tokenizer([self._render(r) for r in requests], return_tensors="pt", padding=True,
                           add_special_tokens=False).to(self.device)
        kwargs = dict(max_new_tokens=self.max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        if self.temperature > 0:
            from transformers import LogitsProcessorList

            sampler = per_request_sampler([r.seed for r in requests], self.temperature)
            kwargs["logits_processor"] = LogitsProcessorList([sampler])
        with torch.no_grad():  # only ids and mask: some tokenizers add token_type_ids that LMs refuse
            output = self._model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                          **kwargs)
        prompt_len = inputs["input_ids"].shape[1]
        results = []
        for row, request in enumerate(requests):
            new = output[row, prompt_len:]
            # Tokens after the end of a shorter reply are padding (or eos) and are not counted.
            stop = [i for i, tok in enumerate(new.tolist()) if tok in (tokenizer.eos_token_id, tokenizer.pad_token_id)]
            new = new[: stop[0]] if stop else new
            prompt_tokens = int(inputs["attention_mask"][row].sum())
            results.append(GenerationResult(tokenizer.decode(new, skip_special_tokens=True), prompt_tokens, len(new)))
        return results

    def generate(self, requests: Sequence[Request]) -> List[GenerationResult]:
        self._load()
        results: List[GenerationResult] = []
        for start in range(0, len(requests), self.micro_batch):
            results.extend(self._generate_batch(requests[start: start + self.micro_batch]))
        return results

    def close(self) -> None:
        self._model = self._tokenizer = None


def create(options: dict) -> TransformersGenerator:
    return TransformersGenerator(options)


# tryfirst: a built-in keeps its names unless a plugin's hook is tryfirst too (core/plugin_manager.py)
@hookimpl(tryfirst=True)
def register_generators(register):
    register(NAME, create, OPTIONS)
