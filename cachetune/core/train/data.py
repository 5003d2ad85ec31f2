"""Training data for ``cachetune train``: reading triplets, tokenising once, building batches.

- :func:`load_triplets` reads and validates a triplet JSONL file (one clear error naming the
  file, line and field), skipping exact repeats and rows of another domain.
- :class:`TokenizedTexts` tokenises every distinct text once, without padding; a batch is
  padded only to its own longest text (dynamic padding).
- :class:`TripletBatchSampler` builds each epoch's batches: seeded shuffle, length grouping
  inside large windows (rows of similar length share a batch, so padding is small) and no
  batch holds two rows that would turn a correct match into an in-batch negative (same
  anchor, or a positive that is another row's positive or hard negative). Its state is just
  ``(epoch, batch index)``: batches are a pure function of seed and epoch, so a resumed run
  sees exactly the batches the interrupted one would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from cachetune.core.errors import CachetuneError
from cachetune.core.jsonl import TRIPLET_FIELDS, check_triplet_fields, iter_jsonl
from cachetune.core.text import exact_key


@dataclass
class TripletData:
    """Validated triplets of one file."""

    path: Path
    anchors: List[str]
    positives: List[str]
    negatives: List[Optional[str]]
    skipped: Dict[str, int] = field(default_factory=dict)
    # Per row: where it came from (the row's ``source``: "llm", a training set, "pairs:FILE") and
    # whether its negative is human-labelled or mined (never "inverted": see drop_inverted_triplets).
    sources: List[str] = field(default_factory=list)
    trusted_negative: List[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.anchors)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def source_counts(self) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for source in self.sources:
            counts[source] = counts.get(source, 0) + 1
        return counts

    def keep(self, mask: Sequence[bool]) -> None:
        """Keep only the rows where ``mask`` is true (every column in step)."""
        for column in (self.anchors, self.positives, self.negatives, self.sources, self.trusted_negative):
            column[:] = [value for value, kept in zip(column, mask) if kept]


def load_triplets(path, domain: Optional[str] = None, need_negative: bool = True) -> TripletData:
    """Read ``{"anchor", "positive", "negative", ...}`` rows from a JSONL file.

    A missing, empty or non-string field is an error naming the line: a silently dropped row
    would hide a broken generator. Skipped (counted, not errors): exact repeats of a row, and
    rows whose ``domain`` names another domain than ``domain``. ``negative`` may be absent
    only when ``need_negative`` is false (``--no-hard-negatives``).
    """
    path = Path(path)
    if path.is_dir():
        raise CachetuneError("expected a triplet JSONL file, got a folder", path)
    fields = TRIPLET_FIELDS if need_negative else TRIPLET_FIELDS[:2]
    data = TripletData(path, [], [], [], {"duplicate": 0, "other_domain": 0})
    seen = set()
    for line, row in iter_jsonl(path):
        check_triplet_fields(row, path, line, fields)
        negative = row.get("negative") if need_negative else None
        if domain is not None and row.get("domain") not in (None, domain):
            data.skipped["other_domain"] += 1
            continue
        if exact_key(row["anchor"]) == exact_key(row["positive"]):
            raise CachetuneError("'anchor' and 'positive' are the same text", path, line)
        if negative is not None and exact_key(negative) == exact_key(row["positive"]):
            raise CachetuneError("'negative' is the same text as 'positive'", path, line)
        key = (row["anchor"], row["positive"], negative)
        if key in seen:
            data.skipped["duplicate"] += 1
            continue
        seen.add(key)
        data.anchors.append(row["anchor"])
        data.positives.append(row["positive"])
        data.negatives.append(negative)
        data.sources.append(str(row.get("source") or "triplets"))
        data.trusted_negative.append(row.get("negative_source") in ("human", "mined"))
    if not data.anchors:
        if data.skipped_total:
            raise CachetuneError(f"no usable triplets for domain '{domain}' "
                                 f"({data.skipped['other_domain']} rows of another domain)", path)
        raise CachetuneError("no triplets (the file is empty)", path)
    return data


class TokenizedTexts:
    """Every distinct text tokenised once (truncated, unpadded); batches are padded on demand."""

    def __init__(self, tokenizer, texts: Sequence[str], max_length: int):
        self.tokenizer = tokenizer
        self.index: Dict[str, int] = {}
        unique: List[str] = []
        for text in texts:
            if text not in self.index:
                self.index[text] = len(unique)
                unique.append(text)
        encoded = tokenizer(unique, truncation=True, max_length=max_length, padding=False)
        self.keys = [k for k in encoded.keys() if k != "attention_mask"]
        self.features = {k: encoded[k] for k in self.keys}
        self.lengths = [len(ids) for ids in encoded["input_ids"]]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.left = getattr(tokenizer, "padding_side", "right") == "left"

    def ids(self, texts: Sequence[str]) -> List[int]:
        return [self.index[t] for t in texts]

    def length(self, text: str) -> int:
        return self.lengths[self.index[text]]

    def batch(self, text_ids: Sequence[int]) -> dict:
        """Tensors for ``text_ids`` padded to the longest of them (dynamic padding)."""
        import torch

        width = max(self.lengths[i] for i in text_ids)
        out = {}
        mask = torch.zeros((len(text_ids), width), dtype=torch.long)
        for key in self.keys:
            pad = self.pad_id if key == "input_ids" else 0
            tensor = torch.full((len(text_ids), width), pad, dtype=torch.long)
            for row, i in enumerate(text_ids):
                values = self.features[key][i]
                if self.left:
                    tensor[row, width - len(values):] = torch.tensor(values, dtype=torch.long)
                else:
                    tensor[row, : len(values)] = torch.tensor(values, dtype=torch.long)
            out[key] = tensor
        for row, i in enumerate(text_ids):
            n = self.lengths[i]
            if self.left:
                mask[row, width - n:] = 1
            else:
                mask[row, :n] = 1
        out["attention_mask"] = mask
        out["modality"] = "text"
        return out


class TripletBatchSampler:
    """Seeded, length-grouped batches of row indices without in-batch false negatives.

    ``lengths[i]`` is row i's size (summed token counts). Each epoch: shuffle all rows with
    ``Random(seed, epoch)``, cut the order into windows of ``batch_size * group_window`` rows,
    sort each window by length and pack it into full batches of similar lengths (a row that
    conflicts with its batch joins the nearest one it fits), then shuffle the batch order so
    lengths do not come in a sweep. With ``world_size > 1`` rank r takes batches r, r + world, ... and
    every rank gets the same number (the remainder is dropped) so gradient averaging lines up.
    """

    def __init__(self, anchors: Sequence[str], positives: Sequence[str], negatives: Sequence[Optional[str]],
                 lengths: Sequence[int], batch_size: int, seed: int = 0, group_window: int = 50,
                 world_size: int = 1, rank: int = 0):
        if batch_size < 1:
            raise CachetuneError(f"--batch-size must be at least 1, got {batch_size}")
        self.anchor_keys = [exact_key(t) for t in anchors]
        self.positive_keys = [exact_key(t) for t in positives]
        self.negative_keys = [exact_key(t) if t is not None else None for t in negatives]
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_window = max(1, group_window)
        self.world_size = world_size
        self.rank = rank
        self._cache: Dict[int, List[List[int]]] = {}

    def all_batches(self, epoch: int) -> List[List[int]]:
        """Every batch of ``epoch`` (all ranks), deterministic in (seed, epoch)."""
        if epoch in self._cache:
            return self._cache[epoch]
        rng = random.Random(f"{self.seed}:{epoch}")
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        window = self.batch_size * self.group_window
        batches: List[List[int]] = []
        carry: List[int] = []
        for start in range(0, len(order), window):
            # Rows of the last window's unfilled batches are sorted in with this one.
            rows = sorted(carry + order[start:start + window], key=lambda i: self.lengths[i])
            packed = self._pack(rows)
            carry = []
            if start + window < len(order):
                carry = [i for b in packed if len(b) < self.batch_size for i in b]
                packed = [b for b in packed if len(b) == self.batch_size]
            batches.extend(packed)
        rng.shuffle(batches)
        self._cache[epoch] = batches
        return batches

    def _pack(self, rows: List[int]) -> List[List[int]]:
        """Pack length-sorted ``rows`` into ``ceil(len / batch_size)`` batches where possible.

        Each row aims at the batch its length rank gives it (length grouping) and takes the
        nearest batch with room and no conflict. Rows whose texts recur most (several
        paraphrases of one query, a query that is also others' hard negative) are placed
        first, while every batch still has room: placed last, they would find every batch
        taken by a conflicting row and end up as tiny batches of their own.
        """
        n_batches = -(-len(rows) // self.batch_size)
        target = {i: rank // self.batch_size for rank, i in enumerate(rows)}
        heat: Dict[str, int] = {}
        for i in rows:
            for key in (self.positive_keys[i], self.negative_keys[i]):
                if key is not None:
                    heat[key] = heat.get(key, 0) + 1
        recurrence = {i: heat[self.positive_keys[i]] + (heat[self.negative_keys[i]]
                                                        if self.negative_keys[i] is not None else 0) for i in rows}
        batches: List[List[int]] = [[] for _ in range(n_batches)]
        keys: List[tuple] = [(set(), set(), set()) for _ in range(n_batches)]  # anchors, positives, candidates
        for i in sorted(rows, key=lambda r: -recurrence[r]):  # stable: length order among equals
            a, p, n = self.anchor_keys[i], self.positive_keys[i], self.negative_keys[i]
            chosen = None
            t = target[i]
            for distance in range(len(batches)):
                for j in ((t,) if distance == 0 else (t + distance, t - distance)):
                    if 0 <= j < len(batches) and len(batches[j]) < self.batch_size:
                        anchors, positives, candidates = keys[j]
                        if a not in anchors and p not in candidates and (n is None or n not in positives):
                            chosen = j
                            break
                if chosen is not None:
                    break
            if chosen is None:  # conflicts with every batch that has room
                batches.append([])
                keys.append((set(), set(), set()))
                chosen = len(batches) - 1
            batches[chosen].append(i)
            anchors, positives, candidates = keys[chosen]
            anchors.add(a)
            positives.add(p)
            candidates.add(p)
            if n is not None:
                candidates.add(n)
        return [b for b in batches if b]

    def steps_per_epoch(self, epoch: int = 0) -> int:
        n = len(self.all_batches(epoch))
        return n if self.world_size == 1 else n // self.world_size

    def rank_batches(self, epoch: int) -> List[List[int]]:
        """This rank's batches of ``epoch``, in order."""
        batches = self.all_batches(epoch)
        steps = self.steps_per_epoch(epoch)
        return [batches[s * self.world_size + self.rank] for s in range(steps)]
