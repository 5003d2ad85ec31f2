"""One batch, several LoRA adapters: each row gets only its own adapter's low-rank update.

peft can do this itself (``adapter_names`` per row: every LoRA layer splits the batch into one
sub-batch per adapter, runs each adapter on its rows and scatters the results back). That costs a
gather, three full-size temporaries and a scatter per adapter and layer: on CPU a mixed batch of two
adapters ran 4-8% slower than the same batch through one adapter (bench/route.py).

:class:`StackedLora` computes the same sum in one pass per layer. Each layer's adapters are stacked
into one wider low-rank pair, ``A`` (in x K*R) and ``B`` (K*R x out, the adapter's scaling folded
in), and a per-row mask keeps only the row's own adapter's R columns of ``x @ A``:

    out += ((x @ A) * mask[row]) @ B

which is exactly ``scaling_k * B_k(A_k(x))`` for the row's adapter k (zero for "no adapter"), added
in place. The adapters run with peft's adapters disabled (the layer then returns its base output)
and a forward hook on each LoRA layer adds the update. Only plain LoRA on Linear layers is stacked;
anything else (DoRA and other variants, a bias on B, LoRA on embeddings or convolutions) uses peft's
own path.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from cachetune.core.errors import CachetuneError


def _lora_layers(peft_model) -> list:
    from peft.tuners.lora.layer import LoraLayer

    return [module for module in peft_model.modules() if isinstance(module, LoraLayer)]


class StackedLora:
    """The adapters ``names`` (peft adapter names) of ``peft_model``, stacked per layer.

    Build it with :meth:`build`, which returns None when some layer cannot be stacked.
    """

    def __init__(self, peft_model, names: Sequence[str], layers: list, stacks: Dict[object, Tuple], rank: int):
        self.peft_model = peft_model
        self.names = list(names)
        self.layers = layers
        self.stacks = stacks  # layer -> (A: in x K*R, B: K*R x out)
        self.rank = rank  # R: every adapter's span of columns (smaller ranks are zero-padded)
        self._mask: Optional[torch.Tensor] = None

    @classmethod
    def build(cls, peft_model, names: Sequence[str]) -> Optional["StackedLora"]:
        from peft.tuners.lora.layer import Linear as LoraLinear

        layers = _lora_layers(peft_model)
        if not layers:
            return None
        for layer in layers:
            if type(layer) is not LoraLinear or getattr(layer, "fan_in_fan_out", False):
                return None
            if any(name in getattr(layer, "lora_variant", {}) or getattr(layer, "lora_bias", {}).get(name)
                   for name in names):
                return None
        rank = max(layer.r[name] for layer in layers for name in names if name in layer.lora_A)
        stacks = {}
        with torch.no_grad():
            for layer in layers:
                weight = layer.get_base_layer().weight
                a = weight.new_zeros(len(names) * rank, layer.in_features)
                b = weight.new_zeros(layer.out_features, len(names) * rank)
                for k, name in enumerate(names):
                    if name not in layer.lora_A:  # this adapter does not target this layer
                        continue
                    r = layer.r[name]
                    a[k * rank:k * rank + r] = layer.lora_A[name].weight
                    b[:, k * rank:k * rank + r] = layer.lora_B[name].weight * layer.scaling[name]
                stacks[layer] = (a.t().contiguous(), b.t().contiguous())
        return cls(peft_model, names, layers, stacks, rank)

    def row_mask(self, row_names: Sequence[Optional[str]], like: torch.Tensor) -> torch.Tensor:
        """(rows, 1, K*R): ones on each row's adapter's columns; a row named None gets zeros."""
        mask = torch.zeros(len(row_names), 1, len(self.names) * self.rank, dtype=like.dtype)
        for i, name in enumerate(row_names):
            if name is not None:
                k = self.names.index(name)
                mask[i, 0, k * self.rank:(k + 1) * self.rank] = 1
        return mask.to(like.device)

    def set_rows(self, row_names: Sequence[Optional[str]]) -> None:
        """The adapters of the next forward's rows, in order."""
        a, _ = next(iter(self.stacks.values()))
        self._mask = self.row_mask(row_names, a)

    def _hook(self, layer, inputs, output):
        a, b = self.stacks[layer]
        x = inputs[0]
        if self._mask is None or self._mask.shape[0] != x.shape[0]:
            raise CachetuneError(f"mixed-adapter batch: {x.shape[0]} rows but "
                                 f"{0 if self._mask is None else self._mask.shape[0]} adapter names")
        low = x.reshape(-1, x.shape[-1]).to(a.dtype) @ a
        low = (low.view(x.shape[0], -1, a.shape[1]) * self._mask).view(-1, a.shape[1])
        update = (low.to(output.dtype), b.to(output.dtype))
        if not output.is_contiguous():
            return output + (update[0] @ update[1]).view(output.shape)
        output.view(-1, output.shape[-1]).addmm_(*update)
        return output

    def run(self, func):
        """``func()`` with peft's adapters off and the stacked update added to every LoRA layer."""
        handles: List = [layer.register_forward_hook(self._hook) for layer in self.layers]
        try:
            with self.peft_model.disable_adapter():
                return func()
        finally:
            for handle in handles:
                handle.remove()
            self._mask = None


__all__ = ["StackedLora"]
