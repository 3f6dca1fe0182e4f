"""Worker for tests/test_radar_distributed.py, run under
``torchrun --standalone --nproc_per_node=W`` (gloo, CPU).

Every rank builds the same fixed global batch of radar CLIP features (global
vectors, radar sequences and text tokens with per-sample masks, the
order-swapped caption's and the time-reversed clip's features, the perturbed
clip's feature; one caption repeated on two ranks; multi-action clips spread
unevenly over the ranks) and computes RadarContrastiveLoss with every term
on (CLIP or SigLIP, combined SequenceSimilarity with a non-zero fusion
layer, temporal negatives, consistency) on its shard, then backward. Each
rank's text tokens are cut to its own longest caption, as the text encoder
pads them. As in tests/dist_losses_worker.py, shared "parameters" hold the
raw features of the whole batch and rank r uses the rows of shard r only.
Checks against one process on the whole batch, for each flag pair
(tests/dist_check.py): the mean over ranks of the per-rank losses is the
global loss, and the mean over ranks (what DDP computes) of every feature's
and every criterion parameter's gradient is its single-process gradient.
Prints one line per case and rank; exits 1 on every rank if any rank failed.
"""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from losses.radar_loss import RadarContrastiveLoss  # noqa: E402
from tests.dist_check import check, finish  # noqa: E402

N_LOCAL, T, L, D = 3, 12, 7, 8
FLOAT_KEYS = ("radar_features", "radar_seq", "text_features", "text_tokens", "swap_features",
              "swap_tokens", "rev_features", "rev_seq", "aug_features")


def global_batch(world_size):
    g = torch.Generator().manual_seed(2024)
    N = N_LOCAL * world_size
    feats = {k: torch.randn(N, D, generator=g, dtype=torch.float64).float()
             for k in ("radar_features", "text_features", "swap_features", "rev_features",
                       "aug_features")}
    for k in ("radar_seq", "rev_seq"):
        feats[k] = torch.randn(N, T, D, generator=g, dtype=torch.float64).float()
    for k in ("text_tokens", "swap_tokens"):
        feats[k] = torch.randn(N, L, D, generator=g, dtype=torch.float64).float()
    frames = torch.randint(4, T + 1, (N,), generator=g)
    words = torch.randint(2, L, (N,), generator=g)
    words[0] = L - 1                                   # rank 0 has the longest caption
    rmask = torch.arange(T)[None] < frames[:, None]
    tmask = (torch.arange(L)[None] < words[:, None] + 1) & (torch.arange(L)[None] > 0)  # no [CLS]
    masks = {"radar_mask": rmask, "rev_mask": rmask, "text_mask": tmask, "swap_mask": tmask}
    captions = [f"caption {i}" for i in range(N)]
    captions[-1] = captions[0]                         # a duplicate on the first and last rank
    has_swap = torch.zeros(N, dtype=torch.bool)
    has_swap[:N_LOCAL] = True                          # rank 0: every clip; the others: one
    has_swap[N_LOCAL + 1::N_LOCAL] = True
    return feats, masks, {"caption": captions, "has_swap": has_swap}


def make_criterion(use_siglip, **kw):
    torch.manual_seed(7)
    crit = RadarContrastiveLoss(D, use_siglip=use_siglip, use_sequence_similarity=True,
                                sequence_similarity_type="combined", sequence_similarity_window_size=2,
                                temporal_negative_weight=0.5, consistency_weight=0.3, **kw)
    with torch.no_grad():                              # a fusion layer that does something
        crit.seq.fuse.weight.normal_(0, 0.2)
        crit.seq.fuse.bias.normal_(0, 0.2)
    return crit


def forward(crit, params, masks, batch, rows):
    f = {k: params[k][rows] for k in FLOAT_KEYS}
    f.update({k: m[rows] for k, m in masks.items()})
    n_tok = int(f["text_mask"].any(0).nonzero().max()) + 1 if rows != slice(None) else L
    for k in ("text_tokens", "text_mask", "swap_tokens", "swap_mask"):
        f[k] = f[k][:, :n_tok]                         # this shard's own padding length
    b = {"caption": batch["caption"][rows], "has_swap": batch["has_swap"][rows]}
    return crit(f, b, 0)[0]


def run_case(name, use_siglip, kwargs, rank, world_size):
    feats, masks, batch = global_batch(world_size)
    sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)

    def leaves():
        return {k: feats[k].clone().requires_grad_() for k in FLOAT_KEYS}

    ref_crit, ref = make_criterion(use_siglip), leaves()
    ref_loss = forward(ref_crit, ref, masks, batch, slice(None))
    ref_loss.backward()

    crit, mine = make_criterion(use_siglip, rank=rank, world_size=world_size, **kwargs), leaves()
    loss = forward(crit, mine, masks, batch, sl)
    loss.backward()
    grads = {k: mine[k].grad for k in FLOAT_KEYS}
    grads.update({k: p.grad for k, p in crit.named_parameters()})
    want = {k: ref[k].grad for k in FLOAT_KEYS}
    want.update({k: p.grad for k, p in ref_crit.named_parameters()})
    return check(f"RadarContrastiveLoss({name})", loss, ref_loss, grads, want)


def main():
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    cases = [("clip, default", False, {}),
             ("clip, gather_with_grad", False, {"gather_with_grad": True}),
             ("clip, local_loss, gather_with_grad", False, {"local_loss": True, "gather_with_grad": True}),
             ("siglip, default", True, {})]
    finish(all([run_case(name, sig, kw, rank, world_size) for name, sig, kw in cases]))


if __name__ == "__main__":
    main()
