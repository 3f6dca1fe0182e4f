"""Radar CLIP evaluation on a whole split (the test gallery in eval.py).

- retrieval text -> radar and radar -> text over the full gallery, every
  caption of every clip a query (training.metrics, LAION-CLAP convention);
- temporal-order accuracy: over the multi-action clips, the share of
  (caption, order-swapped caption) pairs in which the true caption scores
  higher against the clip;
- zero-shot action recognition: each single-action clip against the text
  prompts of every action (data_info.json), argmax;
- all three again, keys prefixed ``heldout_``, on the held-out phrasing
  (data/radar/heldout.py: captions and order-swapped captions made from
  each clip's meta actions and id, zero-shot prompts in words no training
  grammar uses); data without meta actions gets none (said once);
- figures (families/radar/figures.py): example radar maps, the similarity
  matrix, radar-time x text-token alignment heatmaps.

All scores are the configured similarity: the global cosine, plus the
SequenceSimilarity score when the criterion has one (criterion.fused).
Everything is encoded under the run's precision (training.evaluation).
"""
import os

import numpy as np
import torch

from data.radar.dataset import collate_radar
from data.radar.heldout import HELDOUT_ACTION_PROMPTS, heldout_captions
from data.radar.temporal import swapped_for
from families.radar.figures import write_figures
from training.evaluation import encode_split, eval_mode, retrieval_scores

RADAR_KEYS = ("radar_features", "radar_seq", "radar_mask")
TEXT_KEYS = ("text_features", "text_tokens", "text_mask")
INFO_KEYS = ("captions", "label", "num_actions", "clip_id", "actions")


def encode_texts(model, texts, cfg, device, batch_size=256):
    """Text features, token features and masks of ``texts`` (list of str), on device."""
    out = encode_split(model, list(texts), list, cfg, device, keys=TEXT_KEYS,
                       forward=lambda m, b: m.encode_text(b), batch_size=batch_size)
    return {k: out[k].to(device) for k in TEXT_KEYS}


def encode_clips(model, dataset, cfg, device):
    """Radar features of every clip (on device) and the clips' captions,
    labels, action lists and ids (lists)."""
    out = encode_split(model, dataset, collate_radar, cfg, device, keys=RADAR_KEYS,
                       forward=lambda m, b: m.encode_radar(m.radar_views(b), b["radar_mask"]),
                       collect=INFO_KEYS)
    return {k: out[k].to(device) for k in RADAR_KEYS}, {k: out[k] for k in INFO_KEYS}


@torch.no_grad()
def score_matrix(criterion, radar, text, chunk=32):
    """Configured similarity of every text with every clip: [Nt, Ni].

    The texts are scored in chunks of similar token length, each cut to its
    longest caption: a pair's score does not depend on the padding (masked
    tokens add nothing), and the token-level similarity's work follows the
    chunk's length instead of the longest caption's."""
    g = criterion.global_scores(text["text_features"], radar["radar_features"]).float()
    if criterion.seq is None:
        return g
    seq = criterion.seq
    lengths = text["text_mask"].sum(-1)
    order = torch.argsort(lengths, stable=True)
    P = seq.prepare(radar["radar_seq"], radar["radar_mask"], text["text_tokens"][order],
                    text["text_mask"][order])
    cols = []
    for i in range(0, g.shape[0], chunk):
        sl = slice(i, i + chunk)
        n = max(int(lengths[order[sl]].max()), 1)
        part = dict(P, t=P["t"][sl, :n], tm=P["tm"][sl, :n], tg=P["tg"][sl])
        cols.append(seq.scores(part, slice(None)))
    seq_scores = torch.empty_like(g.t())              # [Ni, Nt], back in the texts' order
    seq_scores[:, order] = torch.cat(cols, 1)
    return g + seq_scores.t()


@torch.no_grad()
def paired_scores(criterion, radar, idx, text):
    """Configured and global similarity of clip idx[k] with text k: [K] each."""
    f = {k: v[idx] for k, v in radar.items()}
    f.update(text)
    g, s = criterion.pair_scores(f)
    return criterion.fused(g, s).float(), g.float()


def temporal_order_pairs(dataset, info):
    """(clip index, caption, swapped caption) for every caption of every
    multi-action clip (the swapped list is index-aligned with the captions)."""
    return order_pairs(info["captions"],
                       [dataset.swapped(i) if hasattr(dataset, "swapped") else [] for i in range(len(dataset))])


def order_pairs(captions, swapped_lists):
    pairs = []
    for i, (caps, swapped) in enumerate(zip(captions, swapped_lists)):
        for c in caps:
            s = swapped_for(c, caps, swapped, np.random.default_rng(i))
            if s is not None and s != c:
                pairs.append((i, c, s))
    return pairs


def zeroshot_prompts(dataset, table=None):
    """(action names, one prompt per action) from the dataset's data_info.json
    (or from ``table``, {name: prompt}), or None for data without action
    labels (real mmExpert data)."""
    base = getattr(dataset, "base", dataset)
    names = list(base.action_names)
    prompts = dict(base.action_prompts) if table is None else table
    if not names:
        return None
    missing = [n for n in names if n not in prompts]
    if missing:
        where = os.path.join(base.root, "data_info.json") if table is None else "data/radar/heldout.py"
        raise ValueError(f"{where}: 'action_prompts' lacks {missing}; expected one text prompt per action name")
    return names, [prompts[n] for n in names]


def heldout_set(dataset, info):
    """The held-out phrasing of the split (data/radar/heldout.py): (captions per
    clip, swapped per clip), made from each clip's meta actions and id; None
    when no clip has meta actions (real data: no heldout_ metrics)."""
    base = getattr(dataset, "base", dataset)
    caps, swapped, any_actions = [], [], False
    for i, cid in enumerate(info["clip_id"]):
        actions = base.clip_meta(i).get("actions") or []
        c, s = heldout_captions(actions, cid) if actions else ([], [])
        any_actions = any_actions or bool(actions)
        caps.append(c)
        swapped.append(s)
    return (caps, swapped) if any_actions else None


def encoded_lookup(model, texts, cfg, device):
    """Encode every distinct string of ``texts`` once; returns pick(strings) ->
    their encoded rows (text features, tokens, masks) in that order."""
    unique = list(dict.fromkeys(texts))
    row = {c: j for j, c in enumerate(unique)}
    encoded = encode_texts(model, unique, cfg, device)
    return lambda strings: {k: v[torch.tensor([row[c] for c in strings], device=device)]
                            for k, v in encoded.items()}


def order_scores(criterion, radar, pairs, pick, device):
    """Each pair's clip against its true and its order-swapped caption:
    (pair texts, configured scores (pos, neg), global scores (pos, neg)), [K] each."""
    idx = torch.tensor([p[0] for p in pairs], device=device)
    pair_text = (pick([p[1] for p in pairs]), pick([p[2] for p in pairs]))
    (pos, pos_g), (neg, neg_g) = (paired_scores(criterion, radar, idx, t) for t in pair_text)
    return pair_text, (pos, neg), (pos_g, neg_g)


def text_side_metrics(model, criterion, radar, info, captions, pairs, prompts, cfg, device):
    """Every metric that reads the captions: retrieval of ``captions`` (per clip,
    lists; clips without any are gallery distractors), temporal order over
    ``pairs`` and zero-shot actions from ``prompts`` ((names, texts) or None).
    Returns (metrics, [Nt, Ni] scores, the pairs' encoded texts or None)."""
    texts, text_to_item = [], []
    for i, caps in enumerate(captions):
        texts += caps
        text_to_item += [i] * len(caps)
    # every distinct string once: the order pairs' true captions are retrieval queries too
    pick = encoded_lookup(model, texts + [p[k] for p in pairs for k in (1, 2)], cfg, device)
    scores = score_matrix(criterion, radar, pick(texts))  # [Nt, Ni]
    metrics = retrieval_scores(scores, text_to_item, "r")
    metrics["t2r_chance_R@10"] = min(1.0, 10 / len(captions))

    # temporal order: true caption vs its order-swapped version, same clip
    metrics["temporal_order_pairs"] = len(pairs)
    pair_text = None
    if pairs:
        pair_text, (pos, neg), (pos_g, neg_g) = order_scores(criterion, radar, pairs, pick, device)
        metrics["temporal_order_acc"] = (pos > neg).float().mean().item()
        metrics["temporal_order_acc_global"] = (pos_g > neg_g).float().mean().item()

    # zero-shot action recognition on single-action clips
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
    return metrics, scores, pair_text


def evaluate_radar(model, criterion, dataset, cfg, device, out_dir=None, writer=None, step=0):
    with eval_mode(model), eval_mode(criterion):
        radar, info = encode_clips(model, dataset, cfg, device)
        pairs = temporal_order_pairs(dataset, info)
        metrics, scores, pair_text = text_side_metrics(model, criterion, radar, info, info["captions"], pairs,
                                                       zeroshot_prompts(dataset), cfg, device)
        # the same on the held-out phrasing (captions no training grammar writes)
        held = heldout_set(dataset, info)
        if held is None:
            _log_once(f"radar eval: {getattr(getattr(dataset, 'base', dataset), 'root', '?')}: no clip has meta "
                      "actions (real data), so no heldout_ metrics")
        else:
            h_caps, h_swapped = held
            prompts = zeroshot_prompts(dataset, HELDOUT_ACTION_PROMPTS) if set(
                getattr(dataset, "base", dataset).action_names) <= set(HELDOUT_ACTION_PROMPTS) else None
            h, _, _ = text_side_metrics(model, criterion, radar, info, h_caps, order_pairs(h_caps, h_swapped),
                                        prompts, cfg, device)
            metrics.update({f"heldout_{k}": v for k, v in h.items()})

        if out_dir is not None or writer is not None:
            write_figures(model, criterion, dataset, radar, info, scores, pairs, pair_text,
                          out_dir, writer, step)
    return metrics


_told = set()


def _log_once(msg):
    if msg not in _told:
        _told.add(msg)
        print(msg)
