"""Average LoRA adapters trained on one base model (e.g. the same recipe at several training seeds)
into one adapter: the mean of their weight updates, exactly.

    python tools/average_adapters.py --output runs/soup ADAPTER_DIR ADAPTER_DIR [...]

peft's ``add_weighted_adapter(combination_type="cat")`` stacks the adapters' LoRA factors, so the
result's update is ``sum(w_i * B_i A_i)`` (here ``w_i = 1/n``) at rank ``n * r``: n times the size
of one adapter. The script checks that mean on every LoRA layer before writing, and refuses
adapters whose cards name different base models. The card of the first adapter is kept, with
``averaged_from`` (each adapter's folder and weights sha256) added, so cachetune's loaders treat the
result as that adapter. A developer tool, not packaged: README's Results use it to ask whether a
seed average beats a seed draw.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path


def average(adapters, output: Path) -> dict:
    from peft import PeftModel

    from cachetune.core.adapters import CARD_FILE, PEFT_WEIGHTS, check_base_model
    from cachetune.core.errors import CachetuneError
    from cachetune.core.models import load_sentence_transformer, sha256_file

    cards = [json.loads((Path(a) / CARD_FILE).read_text(encoding="utf-8")) for a in adapters]
    bases = {(c["base_model"]["id"], c["base_model"].get("weights_sha256")) for c in cards}
    if len(bases) != 1:
        raise CachetuneError(f"the adapters were trained on different base models: {sorted(bases)}")
    model = load_sentence_transformer(check_base_model(cards[0]["base_model"], None, adapters[0]), device="cpu")
    names = [f"a{i}" for i in range(len(adapters))]
    peft_model = PeftModel.from_pretrained(model[0].auto_model, str(adapters[0]), adapter_name=names[0])
    for name, folder in zip(names[1:], adapters[1:]):
        peft_model.load_adapter(str(folder), adapter_name=name)
    weights = [1.0 / len(names)] * len(names)
    peft_model.add_weighted_adapter(names, weights, "mean", combination_type="cat")
    layers = [m for m in peft_model.modules() if hasattr(m, "lora_A") and "mean" in m.lora_A]
    for layer in layers:  # the stacked factors must give the mean update, layer by layer

        def update(name, layer=layer):
            return layer.scaling[name] * layer.lora_B[name].weight @ layer.lora_A[name].weight

        want = sum(update(n) for n in names) / len(names)
        if not (update("mean") - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max())):
            raise CachetuneError("peft's stacked adapter is not the mean of the updates (peft version?)")
    for name in names:
        peft_model.delete_adapter(name)
    output.mkdir(parents=True, exist_ok=False)
    with tempfile.TemporaryDirectory(dir=output) as tmp:
        peft_model.save_pretrained(tmp, selected_adapters=["mean"])
        for item in (Path(tmp) / "mean").iterdir():
            shutil.move(str(item), output / item.name)
    card = dict(cards[0])
    card["averaged_from"] = [{"folder": str(a), "weights_sha256": sha256_file(Path(a) / PEFT_WEIGHTS)}
                             for a in adapters]
    card["lora"] = {**card["lora"], "r": card["lora"]["r"] * len(adapters)}
    (output / CARD_FILE).write_text(json.dumps(card, indent=2), encoding="utf-8")
    return {"layers": len(layers), "rank": card["lora"]["r"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapters", nargs="+", type=Path)
    parser.add_argument("--output", type=Path, required=True, help="a new folder")
    args = parser.parse_args(argv)
    from cachetune.core.errors import CachetuneError

    if len(args.adapters) < 2:
        parser.error("give at least two adapters")
    if args.output.exists():
        parser.error(f"--output {args.output} already exists")
    try:
        done = average(args.adapters, args.output)
    except CachetuneError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.output}: mean of {len(args.adapters)} adapters, rank {done['rank']}, {done['layers']} LoRA layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
