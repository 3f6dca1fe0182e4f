"""Evaluation views of a grounding split, for ``training.evaluation.encode_split``.

``ImageBoxes``: one item per image, un-augmented, with ALL its annotated
boxes (every non-empty <bndbox> of Annotations/<id>.xml, in file order, scaled to the
model's input): the candidates of entity -> object matching.
``CaptionEntities``: one item per (image, caption) pair of ``dataset.pairs``,
with the character spans of every phrase that has a box, and for each such
phrase the indices of its chain's boxes among its image's candidates (the
gold boxes; a list, not batched).
"""
import torch
from torch.utils.data import Dataset


def image_boxes(dataset, index):
    """[n, 4] pixel boxes of image ``index``, in the model's input frame."""
    ann = dataset.records[index]["ann"]
    scale = torch.tensor([dataset.S / ann.width, dataset.S / ann.height] * 2)
    return torch.tensor(ann.boxes, dtype=torch.float32).reshape(-1, 4) * scale


def _pad(rows, fill=0.0):
    """[n_i, ...] tensors -> ([B, max n_i (>= 1), ...] padded, [B, max n_i] bool valid)."""
    width = max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), width, *rows[0].shape[1:]), fill, dtype=rows[0].dtype)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, :len(r)], valid[i, :len(r)] = r, True
    return out, valid


class ImageBoxes(Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return {"image": self.dataset.get(i, 0)["image"], "boxes": image_boxes(self.dataset, i),
                "image_index": i}


def collate_image_boxes(items):
    boxes, _ = _pad([it["boxes"] for it in items])                         # [B, max n_i, 4]
    return {"image": torch.stack([it["image"] for it in items]), "boxes": boxes,
            "image_index": torch.tensor([it["image_index"] for it in items])}


def boxed_phrases(dataset, pair):
    """(caption text, [(start, end)], [gold box indices]) of the phrases of
    ``dataset.pairs[pair]`` whose chain has a box."""
    i, c = dataset.pairs[pair]
    cap, ann = dataset.records[i]["captions"][c], dataset.records[i]["ann"]
    ph = [(p.start, p.end, ann.chain_boxes(p.chain)) for p in cap.phrases if ann.chain_boxes(p.chain)]
    return cap.text, [(a, b) for a, b, _ in ph], [g for _, _, g in ph]


class CaptionEntities(Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset.pairs)

    def golds(self):
        """For each caption, for each of its boxed phrases, its gold box indices."""
        return [boxed_phrases(self.dataset, t)[2] for t in range(len(self))]

    def __getitem__(self, t):
        text, spans, _ = boxed_phrases(self.dataset, t)
        return {"caption": text, "entity_spans": torch.tensor(spans, dtype=torch.long).reshape(-1, 2),
                "image_index": self.dataset.pairs[t][0]}


def collate_caption_entities(items):
    spans, valid = _pad([it["entity_spans"] for it in items])              # [B, E, 2], [B, E]
    return {"caption": [it["caption"] for it in items], "entity_spans": spans, "entity_valid": valid,
            "image_index": torch.tensor([it["image_index"] for it in items])}
