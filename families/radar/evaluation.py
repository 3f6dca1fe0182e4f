"""Radar CLIP evaluation on a whole split (the test gallery in eval.py).

- retrieval text -> radar and radar -> text over the full gallery, every
  caption of every clip a query (training.metrics, LAION-CLAP convention);
- temporal-order accuracy: over the multi-action clips, the share of
  (caption, order-swapped caption) pairs in which the true caption scores
  higher against the clip;
- zero-shot action recognition: each single-action clip against the text
  prompts of every action (data_info.json), argmax;
- figures: example radar maps, the similarity matrix, radar-time x
  text-token alignment heatmaps (PNG in out_dir, images in TensorBoard).

All scores are the configured similarity: the global cosine, plus the
SequenceSimilarity score when the criterion has one (criterion.fused).
"""
import os

import numpy as np

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from data.radar.dataset import collate_radar
from data.radar.temporal import swapped_for
from families.radar.figures import write_figures
from training.data import to_device
from training.metrics import retrieval_from_scores
from training.precision import autocast


def _autocast(cfg, device):
    """The run's autocast (fp32, amp fp16, amp_bf16): evaluation encodes as training does."""
    return autocast(cfg["precision"], device)()


def _pad_cat(chunks, dim=1):
    """Concatenate [n, L_i, ...] chunks along 0, zero-padding dim 1 to the longest."""
    L = max(c.shape[dim] for c in chunks)
    out = []
    for c in chunks:
        pad = [0, 0] * (c.dim() - dim - 1) + [0, L - c.shape[dim]]
        out.append(F.pad(c.float() if c.dtype != torch.bool else c.to(torch.uint8), pad))
    x = torch.cat(out, 0)
    return x.bool() if chunks[0].dtype == torch.bool else x


@torch.no_grad()
def encode_texts(model, texts, cfg, device, batch_size=256):
    f, tok, m = [], [], []
    for i in range(0, len(texts), batch_size):
        with _autocast(cfg, device):
            out = model.encode_text(texts[i:i + batch_size])
        f.append(out["text_features"].float())
        tok.append(out["text_tokens"].float())
        m.append(out["text_mask"])
    return {"text_features": torch.cat(f), "text_tokens": _pad_cat(tok), "text_mask": _pad_cat(m)}


@torch.no_grad()
def encode_split(model, dataset, cfg, device):
    """Radar features of every clip plus the captions and swapped captions."""
    loader = DataLoader(dataset, batch_size=cfg["eval"]["batch_size"], shuffle=False,
                        collate_fn=collate_radar, num_workers=0)
    feats, seqs, masks, info = [], [], [], {"captions": [], "label": [], "num_actions": [],
                                             "clip_id": [], "actions": []}
    for batch in loader:
        batch = to_device(batch, device)
        with _autocast(cfg, device):
            out = model.encode_radar(model.radar_views(batch), batch["radar_mask"])
        feats.append(out["radar_features"].float())
        seqs.append(out["radar_seq"].float())
        masks.append(out["radar_mask"])
        info["captions"] += [list(c) for c in batch["captions"]]
        info["label"] += batch["label"].tolist()
        info["num_actions"] += batch["num_actions"].tolist()
        info["clip_id"] += list(batch["clip_id"])
        info["actions"] += [list(a) for a in batch["actions"]]
    radar = {"radar_features": torch.cat(feats), "radar_seq": torch.cat(seqs),
             "radar_mask": torch.cat(masks)}
    return radar, info


@torch.no_grad()
def score_matrix(criterion, radar, text, chunk=32):
    """Configured similarity of every text with every clip: [Nt, Ni]."""
    g = criterion.global_scores(text["text_features"], radar["radar_features"]).float()
    if criterion.seq is None:
        return g
    seq = criterion.seq
    P = seq.prepare(radar["radar_seq"], radar["radar_mask"], text["text_tokens"], text["text_mask"])
    cols = [seq.scores(P, slice(i, i + chunk)) for i in range(0, g.shape[0], chunk)]
    return g + torch.cat(cols, 1).t()  # [Ni, Nt] -> [Nt, Ni]


@torch.no_grad()
def paired_scores(criterion, radar, idx, text):
    """Configured similarity of clip idx[k] with text k: [K]."""
    f = {k: v[idx] for k, v in radar.items()}
    f.update(text)
    g, s = criterion.pair_scores(f)
    return criterion.fused(g, s).float(), g.float()


def temporal_order_pairs(dataset, info):
    """(clip index, caption, swapped caption) for every caption of every
    multi-action clip (the swapped list is index-aligned with the captions)."""
    pairs = []
    for i, caps in enumerate(info["captions"]):
        swapped = dataset.swapped(i) if hasattr(dataset, "swapped") else []
        for c in caps:
            s = swapped_for(c, caps, swapped, np.random.default_rng(i))
            if s is not None and s != c:
                pairs.append((i, c, s))
    return pairs


def zeroshot_prompts(dataset):
    """(action names, one prompt per action) from the dataset's data_info.json,
    or None for data without action labels (real mmExpert data)."""
    base = getattr(dataset, "base", dataset)
    names, prompts = list(base.action_names), dict(base.action_prompts)
    if not names:
        return None
    missing = [n for n in names if n not in prompts]
    if missing:
        raise ValueError(f"{os.path.join(base.root, 'data_info.json')}: 'action_prompts' lacks "
                         f"{missing}; expected one text prompt per action name")
    return names, [prompts[n] for n in names]


@torch.no_grad()
def evaluate_radar(model, criterion, dataset, cfg, device, out_dir=None, writer=None, step=0):
    was_training = model.training
    model.eval()
    criterion.eval()
    radar, info = encode_split(model, dataset, cfg, device)
    texts, text_to_item = [], []
    for i, caps in enumerate(info["captions"]):
        texts += caps
        text_to_item += [i] * len(caps)
    text = encode_texts(model, texts, cfg, device)
    scores = score_matrix(criterion, radar, text)  # [Nt, Ni]
    m = retrieval_from_scores(scores, torch.tensor(text_to_item, dtype=torch.long))
    metrics = {k.replace("t2i_", "t2r_").replace("i2t_", "r2t_"): v for k, v in m.items()}
    metrics["t2r_chance_R@10"] = min(1.0, 10 / len(info["captions"]))

    # temporal order: true caption vs its order-swapped version, same clip
    pairs = temporal_order_pairs(dataset, info)
    metrics["temporal_order_pairs"] = len(pairs)
    pair_text = None
    if pairs:
        idx = torch.tensor([p[0] for p in pairs], device=device)
        pair_text = (encode_texts(model, [p[1] for p in pairs], cfg, device),
                     encode_texts(model, [p[2] for p in pairs], cfg, device))
        pos, pos_g = paired_scores(criterion, radar, idx, pair_text[0])
        neg, neg_g = paired_scores(criterion, radar, idx, pair_text[1])
        metrics["temporal_order_acc"] = (pos > neg).float().mean().item()
        metrics["temporal_order_acc_global"] = (pos_g > neg_g).float().mean().item()

    # zero-shot action recognition on single-action clips
    prompts = zeroshot_prompts(dataset)
    if prompts is not None:
        names, phrases = prompts
        per_action = score_matrix(criterion, radar, encode_texts(model, phrases, cfg, device))
        single = torch.tensor(info["num_actions"], device=device) == 1
        labels = torch.tensor(info["label"], device=device)
        pred = per_action.argmax(0)
        if bool(single.any()):
            metrics["zeroshot_action_acc"] = (pred == labels)[single].float().mean().item()
            metrics["zeroshot_clips"] = int(single.sum())
            metrics["zeroshot_chance"] = 1.0 / len(names)

    if out_dir is not None or writer is not None:
        write_figures(model, criterion, dataset, radar, info, scores, pairs, pair_text,
                      out_dir, writer, step)
    model.train(was_training)
    criterion.train(was_training)
    return metrics
