"""Flickr30k Entities loader (real or generated data) with box-consistent
augmentation (data/grounding/augment.py) and the patch masks used by dynamic
masking and by the masked-object negatives.

Nothing is dropped silently: empty boxes are skipped and counted, boxes of an
image whose JPEG is not the XML's <size> are rescaled (one warning with the
count), every box and phrase is kept unless data.max_objects/max_entities
caps them, and ``describe()`` prints all of it.

One item is one image with one of its captions (a different caption each
epoch in training, open_clip style); evaluation walks every caption.
"""
import os
import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.grounding.augment import View
from data.grounding.files import AnnotationFiles
from data.grounding.format import read_annotation, read_sentences, read_split
from data.grounding.spans import swap_left_right
from training.data import item_rng

MASK_STRATEGIES = ("none", "random", "object", "centre")


def box_patch_mask(box, grid, patch):
    """[grid*grid] bool: patches whose centre lies in the box (at least the one
    holding the box centre, so a small box still masks something)."""
    c = (np.arange(grid) + 0.5) * patch
    inx = (c >= box[0]) & (c < box[2])
    iny = (c >= box[1]) & (c < box[3])
    m = iny[:, None] & inx[None, :]
    cx = min(int((box[0] + box[2]) / 2 // patch), grid - 1)
    cy = min(int((box[1] + box[3]) / 2 // patch), grid - 1)
    m[cy, cx] = True
    return m.reshape(-1)


def dynamic_patch_mask(rng, strategy, ratio, grid, keep_boxes, patch):
    """MAE-style masking of a share `ratio` of the grid*grid patches.

    random: argsort of uniform noise, mask the first `ratio` share.
    object: the same, but only background patches (touching no referenced box)
            may be masked, so the named objects stay visible.
    centre: a centred square block of about `ratio` of the patches.
    """
    P = grid * grid
    k = int(round(ratio * P))
    mask = np.zeros(P, bool)
    if strategy == "none" or k == 0:
        return mask
    if strategy == "centre":
        side = max(1, int(round(np.sqrt(k))))
        a = (grid - side) // 2
        m = np.zeros((grid, grid), bool)
        m[a:a + side, a:a + side] = True
        return m.reshape(-1)
    noise = rng.random(P)
    if strategy == "object":
        edges = np.arange(grid + 1) * patch
        for b in keep_boxes:  # any overlap with a referenced box protects the patch
            inx = (edges[1:] > b[0]) & (edges[:-1] < b[2])
            iny = (edges[1:] > b[1]) & (edges[:-1] < b[3])
            noise[(iny[:, None] & inx[None, :]).reshape(-1)] = np.inf
        k = min(k, int(np.isfinite(noise).sum()))
    elif strategy != "random":
        raise ValueError(f"data.mask_strategy must be one of {MASK_STRATEGIES}, got {strategy!r}")
    mask[np.argsort(noise)[:k]] = True
    return mask


def object_slots(caption, ann, max_objects=None):
    """Box indices in slot order: the boxes the caption names first, then the
    rest of the image's boxes; the first ``max_objects`` (None: all)."""
    referred = [b for p in caption.phrases for b in ann.chain_boxes(p.chain)]
    order = list(dict.fromkeys(referred + list(range(len(ann.boxes)))))
    return order[:max_objects], len(set(referred) & set(order[:max_objects]))


def boxed_phrase_count(caption, ann):
    return sum(1 for p in caption.phrases if ann.chain_boxes(p.chain))


class GroundingDataset(Dataset):
    """``layout``: flickr30k_entities (Sentences/, Annotations/ folders) or
    flickr30k_entities_zip (the repository's annotations.zip, read in place).
    ``max_objects`` / ``max_entities``: None keeps every box and phrase
    (the collate pads to the batch's largest); a number caps them, and
    ``self.report`` says how many boxes and phrases the caps drop."""

    def __init__(self, root, split, image_size=64, patch_size=8, max_objects=None, max_entities=None,
                 train=False, crop_scale_min=0.7, hflip=0.5, color_jitter=0.0, randaugment=0,
                 randaugment_magnitude=9, mask_strategy="none", mask_ratio=0.3, seed=0,
                 layout="flickr30k_entities"):
        if image_size % patch_size:
            raise ValueError(f"data.image_size {image_size} must be a multiple of model.patch_size {patch_size}")
        if mask_strategy not in MASK_STRATEGIES:
            raise ValueError(f"data.mask_strategy must be one of {MASK_STRATEGIES}, got {mask_strategy!r}")
        for key, cap in (("max_objects", max_objects), ("max_entities", max_entities)):
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
                raise ValueError(f"data.{key} must be null (keep all) or a positive integer, got {cap!r}")
        self.root, self.split, self.train, self.seed, self.epoch = root, split, train, seed, 0
        self.S, self.patch, self.grid = image_size, patch_size, image_size // patch_size
        self.max_objects, self.max_entities = max_objects, max_entities
        self.view = View(image_size, crop_scale_min, hflip, color_jitter, randaugment, randaugment_magnitude)
        self.mask_strategy, self.mask_ratio = mask_strategy, mask_ratio
        self.records = []
        files = AnnotationFiles(root, zipped=layout == "flickr30k_entities_zip")
        for image_id in read_split(root, split):
            img_path = os.path.join(root, "flickr30k-images", f"{image_id}.jpg")
            if not os.path.exists(img_path):
                raise FileNotFoundError(f"{img_path}: image of split {split!r} not found")
            where, raw = files.read("Sentences", f"{image_id}.txt")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not UTF-8 text ({e})") from None
            self.records.append({"id": image_id, "image": img_path, "captions": read_sentences(where, text),
                                 "ann": read_annotation(*files.read("Annotations", f"{image_id}.xml"))})
        files.close()
        # (image, caption) pairs, for evaluation over every caption
        self.pairs = [(i, c) for i, r in enumerate(self.records) for c in range(len(r["captions"]))]
        self.rescaled = self._match_image_sizes()
        self.report = self._report()

    def _match_image_sizes(self):
        """Boxes of an XML whose <size> is not its JPEG's are rescaled to the
        JPEG (the pixels are what the model sees). Returns how many; warns once."""
        mismatched = []
        for rec in self.records:
            ann = rec["ann"]
            with Image.open(rec["image"]) as im:  # reads the header only
                W, H = im.size
            if (W, H) == (ann.width, ann.height):
                continue
            mismatched.append(f"{rec['image']} is {W}x{H}, Annotations/{rec['id']}.xml <size> "
                              f"{ann.width}x{ann.height}")
            sx, sy = W / ann.width, H / ann.height
            ann.boxes = [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in ann.boxes]
            ann.width, ann.height = W, H
        if mismatched:
            warnings.warn(f"grounding {self.split}: {len(mismatched)} of {len(self.records)} images differ "
                          f"in size from their annotation's <size>; their boxes were rescaled to the "
                          f"image (first: {mismatched[0]})", stacklevel=2)
        return len(mismatched)

    def _report(self):
        """What the loader skipped or capped, counted over the split."""
        skipped = sum(len(r["ann"].skipped) for r in self.records)
        boxes = sum(len(r["ann"].boxes) for r in self.records)
        r = {"images": len(self.records), "captions": len(self.pairs), "boxes": boxes,
             "degenerate_boxes": skipped, "rescaled_images": self.rescaled,
             "max_boxes": max([len(r["ann"].boxes) for r in self.records], default=0),
             "max_phrases": 0, "boxes_dropped": 0, "phrases_dropped": 0, "phrases": 0}
        for i, c in self.pairs:
            cap, ann = self.records[i]["captions"][c], self.records[i]["ann"]
            n = boxed_phrase_count(cap, ann)
            order, _ = object_slots(cap, ann, self.max_objects)
            kept = len(self._entities(cap, ann, order, np.ones(len(order), bool)))
            r["phrases"] += n
            r["max_phrases"] = max(r["max_phrases"], n)
            r["phrases_dropped"] += n - kept
            r["boxes_dropped"] += len(ann.boxes) - len(order)
        return r

    def describe(self):
        r = self.report
        line = (f"grounding {self.split}: {r['images']} images, {r['captions']} captions, {r['boxes']} boxes "
                f"(up to {r['max_boxes']} an image), {r['phrases']} phrases with a box (up to "
                f"{r['max_phrases']} a caption); {r['degenerate_boxes']} empty boxes skipped; "
                f"{r['rescaled_images']} images rescaled to their JPEG size")
        if self.max_objects is not None or self.max_entities is not None:
            line += (f"; caps data.max_objects {self.max_objects} / data.max_entities {self.max_entities} "
                     f"drop {r['boxes_dropped']} box slots and {r['phrases_dropped']} phrases over all "
                     f"captions (null keeps all)")
        return line

    def _entities(self, caption, ann, order, valid):
        """[(start, end, slots)] of the phrases whose boxes hold a valid slot, in caption order."""
        out = []
        for p in caption.phrases:
            slots = [order.index(b) for b in ann.chain_boxes(p.chain) if b in order]
            slots = [s for s in slots if valid[s]]
            if slots:  # else: scene, not visual, or a box cut away
                out.append((p.start, p.end, slots))
        return out[:self.max_entities]

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        rng = item_rng(self.seed, self.epoch, index) if self.train else None
        cap = int(rng.integers(len(self.records[index]["captions"]))) if rng is not None else 0
        return self.get(index, cap, rng)

    def get(self, index, caption_index, rng=None):
        """One (image, caption) pair; rng None = no augmentation, no masks.
        n boxes and e phrases vary by item; ``collate`` pads them."""
        rec = self.records[index]
        caption, ann = rec["captions"][caption_index], rec["ann"]
        img = Image.open(rec["image"]).convert("RGB")
        order, n_named = object_slots(caption, ann, self.max_objects)
        boxes = np.array([ann.boxes[b] for b in order], np.float32).reshape(-1, 4)
        img, boxes, kept, flipped = self.view(img, boxes, n_named, rng)   # boxes [n, 4] in S x S
        valid = (kept >= 0.5).numpy()  # a box mostly cut away is no longer that object
        if flipped:
            caption = swap_left_right(caption)
        ents = self._entities(caption, ann, order, valid)
        spans = np.array([(a, b) for a, b, _ in ents], np.int64).reshape(-1, 2)   # [e, 2]
        target = np.zeros((len(ents), len(order)), bool)                           # [e, n]
        for k, (_, _, slots) in enumerate(ents):
            target[k, slots] = True
        x = torch.from_numpy(np.asarray(img, np.float32) / 127.5 - 1.0).permute(2, 0, 1)  # [3, S, S]
        item = {"image": x, "caption": caption.text, "boxes": boxes.float(),
                "obj_valid": torch.from_numpy(valid), "entity_spans": torch.from_numpy(spans),
                "entity_valid": torch.ones(len(ents), dtype=torch.bool),
                "entity_target": torch.from_numpy(target), "image_index": torch.tensor(index)}
        if rng is not None:
            out_boxes = boxes.numpy()
            referred_slots = np.flatnonzero(target.any(0))
            item["patch_mask"] = torch.from_numpy(dynamic_patch_mask(
                rng, self.mask_strategy, self.mask_ratio, self.grid, out_boxes[referred_slots], self.patch))
            neg = np.zeros(self.grid * self.grid, bool)
            if len(referred_slots):  # the masked-object negative hides one object the caption names
                neg = box_patch_mask(out_boxes[rng.choice(referred_slots)], self.grid, self.patch)
            item["neg_patch_mask"] = torch.from_numpy(neg)
        return item


# per-item keys with a variable first dim (boxes n, phrases e) and the dims the collate pads
_PADDED = {"boxes": (0,), "obj_valid": (0,), "entity_spans": (0,), "entity_valid": (0,),
           "entity_target": (0, 1)}


def collate(items):
    """Stack items; boxes and phrases are padded to the batch's largest
    (at least 1), the padding marked invalid (obj_valid / entity_valid False)."""
    batch = {"caption": [it["caption"] for it in items]}
    n = max(1, max(len(it["boxes"]) for it in items))
    e = max(1, max(len(it["entity_spans"]) for it in items))
    for k in items[0]:
        if k == "caption":
            continue
        if k not in _PADDED:
            batch[k] = torch.stack([it[k] for it in items])
            continue
        vals = [it[k] for it in items]
        full = {"boxes": (n, 4), "obj_valid": (n,), "entity_spans": (e, 2), "entity_valid": (e,),
                "entity_target": (e, n)}[k]
        out = torch.zeros((len(items), *full), dtype=vals[0].dtype)
        for i, v in enumerate(vals):
            out[(i, *[slice(0, s) for s in v.shape])] = v
        batch[k] = out
    return batch
