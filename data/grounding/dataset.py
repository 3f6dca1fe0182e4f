"""Flickr30k Entities loader (real or generated data) with box-consistent
augmentation and the patch masks used by dynamic masking and by the
masked-object negatives.

One item is one image with one of its captions (a different caption each
epoch in training, open_clip style); evaluation walks every caption.
"""
import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.grounding.format import read_annotation, read_sentences, read_split
from data.grounding.spans import swap_left_right
from training.data import item_rng

MASK_STRATEGIES = ("none", "random", "object", "centre")


def crop_boxes(boxes, crop):
    """Boxes [N, 4] xyxy -> coordinates inside crop (x0, y0, x1, y1), clipped,
    and the share of each box's area that survives the crop."""
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    x0, y0, x1, y1 = crop
    out = boxes - [x0, y0, x0, y0]
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, x1 - x0)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, y1 - y0)
    area = lambda b: (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    return out, area(out) / np.maximum(area(boxes), 1e-9)


def flip_boxes(boxes, width):
    boxes = np.asarray(boxes, float).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
    return boxes


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


class GroundingDataset(Dataset):
    def __init__(self, root, split, image_size=64, patch_size=8, max_objects=5, max_entities=5,
                 train=False, crop_scale_min=0.7, hflip=0.5, mask_strategy="none", mask_ratio=0.3,
                 seed=0):
        if image_size % patch_size:
            raise ValueError(f"data.image_size {image_size} must be a multiple of model.patch_size {patch_size}")
        if mask_strategy not in MASK_STRATEGIES:
            raise ValueError(f"data.mask_strategy must be one of {MASK_STRATEGIES}, got {mask_strategy!r}")
        self.root, self.split, self.train, self.seed, self.epoch = root, split, train, seed, 0
        self.S, self.patch, self.grid = image_size, patch_size, image_size // patch_size
        self.max_objects, self.max_entities = max_objects, max_entities
        self.crop_scale_min, self.hflip = crop_scale_min, hflip
        self.mask_strategy, self.mask_ratio = mask_strategy, mask_ratio
        self.records = []
        for image_id in read_split(root, split):
            img_path = os.path.join(root, "flickr30k-images", f"{image_id}.jpg")
            if not os.path.exists(img_path):
                raise FileNotFoundError(f"{img_path}: image of split {split!r} not found")
            self.records.append({"id": image_id, "image": img_path,
                                 "captions": read_sentences(os.path.join(root, "Sentences", f"{image_id}.txt")),
                                 "ann": read_annotation(os.path.join(root, "Annotations", f"{image_id}.xml"))})
        # (image, caption) pairs, for evaluation over every caption
        self.pairs = [(i, c) for i, r in enumerate(self.records) for c in range(len(r["captions"]))]

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        rng = item_rng(self.seed, self.epoch, index) if self.train else None
        cap = int(rng.integers(len(self.records[index]["captions"]))) if rng is not None else 0
        return self.get(index, cap, rng)

    def get(self, index, caption_index, rng=None):
        """One (image, caption) pair; rng None = no augmentation, no masks."""
        rec = self.records[index]
        caption, ann = rec["captions"][caption_index], rec["ann"]
        img = Image.open(rec["image"]).convert("RGB")
        if img.size != (ann.width, ann.height):
            raise ValueError(f"{rec['image']}: image is {img.size[0]}x{img.size[1]} but "
                             f"Annotations/{rec['id']}.xml <size> says {ann.width}x{ann.height}")
        # object slots: boxes the caption refers to first, then the rest of the image's boxes
        referred = [b for p in caption.phrases for b in ann.chain_boxes(p.chain)]
        order = list(dict.fromkeys(referred + list(range(len(ann.boxes)))))[: self.max_objects]
        boxes = np.array([ann.boxes[b] for b in order], float).reshape(-1, 4)
        W, H = img.size
        crop = (0, 0, W, H)
        if rng is not None and self.crop_scale_min < 1:
            crop = self._random_crop(rng, W, H, boxes[: len(set(referred) & set(order))])
        img = img.crop(crop).resize((self.S, self.S), Image.BILINEAR)
        boxes, kept = crop_boxes(boxes, crop)
        boxes *= [self.S / (crop[2] - crop[0]), self.S / (crop[3] - crop[1])] * 2
        obj_valid = kept >= 0.5  # a box mostly cut away is no longer that object
        if rng is not None and rng.random() < self.hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
            boxes = flip_boxes(boxes, self.S)
            caption = swap_left_right(caption)
        O, E = self.max_objects, self.max_entities
        out_boxes = np.zeros((O, 4), np.float32)
        out_boxes[: len(boxes)] = boxes
        valid = np.zeros(O, bool)
        valid[: len(boxes)] = obj_valid
        spans = np.zeros((E, 2), np.int64)
        target = np.zeros((E, O), bool)
        n_ent = 0
        for p in caption.phrases:
            slots = [order.index(b) for b in ann.chain_boxes(p.chain) if b in order]
            slots = [s for s in slots if valid[s]]
            if not slots or n_ent == E:
                continue  # scene, not visual, or a box we could not keep
            spans[n_ent] = (p.start, p.end)
            target[n_ent, slots] = True
            n_ent += 1
        ent_valid = np.arange(E) < n_ent
        x = torch.from_numpy(np.asarray(img, np.float32) / 127.5 - 1.0).permute(2, 0, 1)  # [3, S, S]
        item = {"image": x, "caption": caption.text, "boxes": torch.from_numpy(out_boxes),
                "obj_valid": torch.from_numpy(valid), "entity_spans": torch.from_numpy(spans),
                "entity_valid": torch.from_numpy(ent_valid), "entity_target": torch.from_numpy(target),
                "image_index": torch.tensor(index)}
        if rng is not None:
            referred_slots = np.flatnonzero(target.any(0))
            item["patch_mask"] = torch.from_numpy(dynamic_patch_mask(
                rng, self.mask_strategy, self.mask_ratio, self.grid, out_boxes[referred_slots], self.patch))
            neg = np.zeros(self.grid * self.grid, bool)
            if len(referred_slots):  # the masked-object negative hides one object the caption names
                neg = box_patch_mask(out_boxes[rng.choice(referred_slots)], self.grid, self.patch)
            item["neg_patch_mask"] = torch.from_numpy(neg)
        return item

    def _random_crop(self, rng, W, H, keep):
        """A square-ish crop of scale in [crop_scale_min, 1] holding every box in keep."""
        s = rng.uniform(self.crop_scale_min, 1.0)
        cw, ch = int(round(W * s)), int(round(H * s))
        if len(keep):
            ux0, uy0 = keep[:, 0].min(), keep[:, 1].min()
            ux1, uy1 = keep[:, 2].max(), keep[:, 3].max()
            cw, ch = max(cw, int(np.ceil(ux1 - ux0))), max(ch, int(np.ceil(uy1 - uy0)))
            lox, hix = max(0, int(np.ceil(ux1)) - cw), min(int(ux0), W - cw)
            loy, hiy = max(0, int(np.ceil(uy1)) - ch), min(int(uy0), H - ch)
        else:
            lox, hix, loy, hiy = 0, W - cw, 0, H - ch
        x0 = int(rng.integers(lox, max(lox, hix) + 1))
        y0 = int(rng.integers(loy, max(loy, hiy) + 1))
        return (x0, y0, x0 + cw, y0 + ch)


def collate(items):
    batch = {"caption": [it["caption"] for it in items]}
    for k in items[0]:
        if k != "caption":
            batch[k] = torch.stack([it[k] for it in items])
    return batch
