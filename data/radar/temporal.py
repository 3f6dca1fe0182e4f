"""Temporal hard negatives (seed 000 sec. 3.1): each clip's order-swapped caption.

A generated clip's ``meta/{id}.json`` lists, index-aligned with its
captions, the same sentences with the actions in another order ("jumps then
walks" for a walk-then-jump clip). ``TemporalNegatives`` serves one of them
with every item; the loss and the temporal-order metric use it.
"""
from torch.utils.data import Dataset

from training.data import item_rng


def swapped_captions(meta, path):
    """The clip's order-swapped captions from its meta dict ([] if none)."""
    swapped = meta.get("order_swapped_captions", [])
    if not isinstance(swapped, list):
        raise ValueError(f"{path}: field 'order_swapped_captions' must be a list of captions "
                         "(the swapped-order paraphrases; [] for a single action)")
    return swapped


def swapped_for(caption, captions, swapped, rng):
    """The order-swapped paraphrase matching ``caption`` when the lists are
    parallel, else a random one (None when the clip has none)."""
    if not swapped:
        return None
    if len(swapped) == len(captions) and caption in captions:
        return swapped[captions.index(caption)]
    return swapped[int(rng.integers(len(swapped)))]


class TemporalNegatives(Dataset):
    """Adds ``swapped_caption`` (str) and ``has_swap`` (bool) to every item of
    a RadarTextDataset, from the clip's ``meta/{id}.json``; clips without one
    (single actions, real data without meta) get their own caption and
    has_swap False, and the loss and the metric skip them."""

    def __init__(self, base, seed=0):
        self.base, self.seed, self.epoch = base, seed, 0
        self._swapped = {}

    def __len__(self):
        return len(self.base)

    def set_epoch(self, epoch):
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def swapped(self, i):
        """Every order-swapped caption of clip i (index-aligned with its captions)."""
        if i not in self._swapped:
            self._swapped[i] = swapped_captions(self.base.clip_meta(i), self.base.items[i]["meta"])
        return self._swapped[i]

    def __getitem__(self, i):
        item = dict(self.base[i])
        # Its own stream (seed + 7): the base item's crop and caption draws stay as they are.
        swapped = swapped_for(item["caption"], item["captions"], self.swapped(i),
                              item_rng(self.seed + 7, self.epoch, i))
        item["swapped_caption"] = swapped if swapped is not None else item["caption"]
        item["has_swap"] = swapped is not None and swapped != item["caption"]
        return item
