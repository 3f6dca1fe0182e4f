"""Full-gallery retrieval metrics, several captions per item (LAION-CLAP).

Queries are texts (``Nt``) and gallery items (``Ni``); ``text_to_item[t]``
is the item caption t describes. Items may have any number of captions,
including none (pure distractors: in the gallery, never an i2t query).

Ranks are 1-based over the whole gallery. Ties are broken pessimistically:
the rank of a true match with score s is the number of candidates scoring
>= s (itself included), so a constant scorer gets the worst rank, not the
best.

text -> item (one query per caption, averaged over all captions):
    R@K = share of captions with rank <= K; mean / median rank;
    mAP@10 = mean of 1/rank if rank <= 10 else 0 (one relevant item per
    query, so AP@10 is the reciprocal rank cut at 10).
item -> text (one query per item that has captions, against all texts):
    the item's rank is that of its best-ranked caption (R@K, mean / median
    rank); mAP@10 is LAION-CLAP's (after Mei et al.'s audio-text retrieval
    code): with r_1 <= r_2 <= ... the ranks of the item's captions among all
    texts, AP@10 = sum_{k: r_k <= 10} (k / r_k) / n_captions(item), i.e.
    precision at each relevant hit in the top 10, divided by the number of
    relevant captions (5 for Clotho). LAION-CLAP's code forgets to sort the
    caption ranks before assigning k; we sort, as its docstring and Mei et
    al. do, which is the textbook average precision.
Median rank: floor of the median (the mean of the two middle ranks when
their number is even), as LAION-CLAP reports it.

Memory: text->item works on row chunks [chunk_size, Ni]; item->text on
chunks [c, Nt] (one row per caption: its item's scores against all
texts) with c = chunk_size * Ni // Nt, so every step holds about
chunk_size x Ni scores and a 50k gallery never needs the whole Nt x Ni
matrix (Ni = 50k, 5 captions each, chunk_size 1024: ~200 MB per step).
"""
import math

import torch

_KS = (1, 5, 10)


def _rank_stats(ranks, prefix):
    ranks = ranks.double()
    out = {f"{prefix}R@{k}": (ranks <= k).double().mean().item() for k in _KS}
    out[f"{prefix}mean_rank"] = ranks.mean().item()
    r = ranks.sort().values
    m = len(r)
    median = r[m // 2] if m % 2 else (r[m // 2 - 1] + r[m // 2]) / 2
    out[f"{prefix}median_rank"] = float(math.floor(median.item()))
    return out


def _item_to_text(cap_ranks, text_to_item, num_items):
    """cap_ranks[t]: rank of caption t among all texts for its own item."""
    has = torch.bincount(text_to_item, minlength=num_items)  # captions per item
    best = torch.full((num_items,), torch.iinfo(torch.long).max, dtype=torch.long)
    best = best.scatter_reduce(0, text_to_item, cap_ranks, reduce="amin")
    # Ordinal k of each caption among its item's captions sorted by rank.
    order = torch.argsort(text_to_item * (cap_ranks.max() + 1) + cap_ranks, stable=True)
    item_sorted, rank_sorted = text_to_item[order], cap_ranks[order]
    first = torch.cumsum(has, 0) - has  # index of each item's first caption in `order`
    k = torch.arange(len(order)) - first[item_sorted] + 1
    prec = torch.where(rank_sorted <= 10, k.double() / rank_sorted.double(), 0.0)
    ap = torch.zeros(num_items, dtype=torch.double).index_add_(0, item_sorted, prec)
    queries = has > 0
    out = _rank_stats(best[queries], "i2t_")
    out["i2t_mAP@10"] = (ap[queries] / has[queries]).mean().item()
    return out


def _check(nt, ni, text_to_item):
    if text_to_item.dtype != torch.long or text_to_item.shape != (nt,):
        raise ValueError(f"text_to_item must be a LongTensor of shape [{nt}] (one item index "
                         f"per text), got {text_to_item.dtype} {tuple(text_to_item.shape)}")
    if nt == 0:
        raise ValueError("retrieval metrics need at least one text query, got 0")
    if text_to_item.min() < 0 or text_to_item.max() >= ni:
        raise ValueError(f"text_to_item values must lie in [0, {ni}) (the gallery size), "
                         f"got range [{text_to_item.min().item()}, {text_to_item.max().item()}]")


def _metrics(score_rows, score_items, nt, ni, text_to_item, chunk_size):
    """score_rows(t0, t1) -> scores [t1-t0, Ni]; score_items(items) -> the
    items' scores against all texts, [len(items), Nt] (rows, so the
    comparisons below reduce over contiguous memory).
    Ranks are counted on the scores' device; only ranks come back to CPU."""
    text_to_item = text_to_item.cpu()
    _check(nt, ni, text_to_item)
    t2i = torch.empty(nt, dtype=torch.long)
    for t0 in range(0, nt, chunk_size):
        t1 = min(t0 + chunk_size, nt)
        s = score_rows(t0, t1).float()                                  # [c, Ni]
        true = s.gather(1, text_to_item[t0:t1, None].to(s.device))      # [c, 1]
        t2i[t0:t1] = (s >= true).sum(1).cpu()
    # Item -> text: each caption against all texts, in its item's column.
    # Captions per step chosen so a step holds ~chunk_size x Ni scores too.
    step = max(1, chunk_size * ni // nt)
    i2t = torch.empty(nt, dtype=torch.long)
    for t0 in range(0, nt, step):
        t1 = min(t0 + step, nt)
        uniq, inv = torch.unique(text_to_item[t0:t1], return_inverse=True)
        s = score_items(uniq).float()                                   # [u, Nt]
        s = s[inv.to(s.device)]                                         # [c, Nt]
        true = s[torch.arange(t1 - t0, device=s.device), torch.arange(t0, t1, device=s.device)]
        i2t[t0:t1] = (s >= true[:, None]).sum(1).cpu()
    out = _rank_stats(t2i, "t2i_")
    out["t2i_mAP@10"] = torch.where(t2i <= 10, 1.0 / t2i.double(), 0.0).mean().item()
    out.update(_item_to_text(i2t, text_to_item, ni))
    out["gallery_size"], out["num_queries"] = ni, nt
    return out


@torch.no_grad()
def retrieval_metrics(text_emb, item_emb, text_to_item, chunk_size=1024):
    """text_emb [Nt, D], item_emb [Ni, D] (L2-normalised), text_to_item
    LongTensor [Nt] -> flat dict (see module docstring). Scores are dot
    products, computed chunk by chunk on the embeddings' device."""
    nt, ni = text_emb.shape[0], item_emb.shape[0]
    return _metrics(lambda t0, t1: text_emb[t0:t1] @ item_emb.T,
                    lambda items: item_emb[items.to(item_emb.device)] @ text_emb.T,
                    nt, ni, text_to_item, chunk_size)


@torch.no_grad()
def retrieval_from_scores(scores, text_to_item, chunk_size=1024):
    """scores [Nt, Ni] (higher = more similar) -> the same flat dict. For
    similarities that are not a dot product (sequence similarity, ...)."""
    nt, ni = scores.shape
    return _metrics(lambda t0, t1: scores[t0:t1],
                    lambda items: scores[:, items.to(scores.device)].T,
                    nt, ni, text_to_item, chunk_size)
