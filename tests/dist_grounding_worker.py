"""Worker for tests/test_grounding_distributed.py, run under
``torchrun --standalone --nproc_per_node=W`` (gloo, CPU).

Every rank builds the same fixed global batch of grounding features (image,
caption, masked image, entity and object features; masks with unequal
entity counts per rank; one image shown twice in the batch, on different
ranks; fewer items than hard_negative_k + 1, so the mined tail holds
padding) and computes GroundingLoss on its shard, then backward. As in
tests/dist_losses_worker.py, shared "parameters" hold the raw features of the
whole batch and rank r uses the rows of shard r only. Checks against one
process on the whole batch, for each flag pair the loop accepts:
  - loss: the mean over ranks of the per-rank losses == the global loss;
  - gradients: the mean over ranks (what DDP computes) of every feature's and
    every logit scale's gradient == its single-process gradient;
and again "ragged": each shard's entity/object dims cut to its own largest, as
the collate pads a batch (the last rank uses fewer object slots, the ranks
hold different entity counts), so the loss must pad them across ranks.
Prints one line per case and rank; exits 1 on every rank if any rank failed.
"""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from losses.grounding_loss import GroundingLoss  # noqa: E402

ATOL = 1e-5
N_LOCAL, E, O, D = 3, 3, 4, 8
FLOAT_KEYS = ("image_features", "text_features", "masked_image_features", "entity_features",
              "object_features")
SCALES = ("logit_scale", "fine_logit_scale", "hard_logit_scale")


def global_batch(world_size):
    g = torch.Generator().manual_seed(4321)
    N = N_LOCAL * world_size
    shapes = {"image_features": (N, D), "text_features": (N, D), "masked_image_features": (N, D),
              "entity_features": (N, E, D), "object_features": (N, O, D)}
    feats = {k: torch.randn(*s, generator=g) for k, s in shapes.items()}
    # rank 0 holds most entities, the last rank few: a per-rank mean would be wrong
    n_ent = torch.tensor([3, 2, 3, 1, 0, 1, 2, 1, 0][:N])
    feats["entity_valid"] = torch.arange(E)[None] < n_ent[:, None]
    feats["object_valid"] = torch.rand(N, O, generator=g) < 0.8
    feats["object_valid"][:, 0] = True
    target = torch.rand(N, E, O, generator=g) < 0.4
    target[:, :, 0] |= ~target.any(-1)  # every entity names at least one slot
    # the last rank's items use 3 of the 4 object slots: trimmed to its batch (ragged), it pads less
    feats["object_valid"][-N_LOCAL:, O - 1] = False
    target[-N_LOCAL:, :, O - 1] = False
    target[:, :, 0] |= ~(target & feats["object_valid"][:, None, :]).any(-1)
    ids = torch.arange(N) + 10
    ids[-1] = ids[0]  # the same image on the first and the last rank
    return feats, {"image_index": ids, "entity_target": target}


def trim(f, batch):
    """A shard as the collate pads it: entity and object dims cut to the shard's largest."""
    e = max(1, int(f["entity_valid"].sum(1).max()))
    o = max(1, int(f["object_valid"].nonzero()[:, 1].max()) + 1)
    f = dict(f, entity_features=f["entity_features"][:, :e], entity_valid=f["entity_valid"][:, :e],
             object_features=f["object_features"][:, :o], object_valid=f["object_valid"][:, :o])
    return f, dict(batch, entity_target=batch["entity_target"][:, :e, :o])


def run_case(name, kwargs, rank, world_size, ragged=False):
    feats, batch = global_batch(world_size)
    sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    common = dict(hard_negative_k=5, weight_schedule="constant", init_temperature=0.1,
                  loss_weights={"coarse": 1.0, "fine": 1.0, "hard_negative": 0.5})

    def leaves():
        return {k: feats[k].clone().requires_grad_() for k in FLOAT_KEYS}

    def forward(crit, params, rows, ragged=False):
        f = {k: params[k][rows] for k in FLOAT_KEYS}
        f.update(entity_valid=feats["entity_valid"][rows], object_valid=feats["object_valid"][rows])
        b = {k: v[rows] for k, v in batch.items()}
        if ragged:  # ranks hold different entity/object counts: the loss pads across ranks
            f, b = trim(f, b)
        return crit(f, b, 0)[0]

    ref_crit = GroundingLoss(**common)
    ref = leaves()
    ref_loss = forward(ref_crit, ref, slice(None))
    ref_loss.backward()

    crit = GroundingLoss(**common, **kwargs, rank=rank, world_size=world_size)
    mine = leaves()
    loss = forward(crit, mine, sl, ragged)
    loss.backward()
    grads = {k: mine[k].grad for k in FLOAT_KEYS}
    grads.update({k: getattr(crit, k).grad for k in SCALES})
    want = {k: ref[k].grad for k in FLOAT_KEYS}
    want.update({k: getattr(ref_crit, k).grad for k in SCALES})
    for gr in grads.values():
        dist.all_reduce(gr, op=dist.ReduceOp.SUM)
        gr /= world_size
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss, op=dist.ReduceOp.SUM)
    mean_loss /= world_size

    errs = []
    if not torch.allclose(mean_loss, ref_loss.detach(), atol=ATOL, rtol=0):
        errs.append(f"loss {mean_loss.item():.8f} vs {ref_loss.item():.8f}")
    for k, gr in grads.items():
        if not torch.isfinite(want[k]).all() or want[k].abs().sum() == 0:
            errs.append(f"reference grad {k} is not finite or zero")
        elif not torch.allclose(gr, want[k], atol=ATOL, rtol=0):
            errs.append(f"grad {k}: max |diff| {(gr - want[k]).abs().max().item():.3e}")
    status = "OK" if not errs else "FAIL: " + "; ".join(errs)
    name += ", ragged" if ragged else ""
    print(f"[rank {rank}] GroundingLoss({name}): loss {loss.item():.6f} "
          f"(global {ref_loss.item():.6f}) {status}", flush=True)
    return not errs


def main():
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    cases = [("default", {}), ("gather_with_grad", {"gather_with_grad": True}),
             ("local_loss, gather_with_grad", {"local_loss": True, "gather_with_grad": True})]
    ok = all([run_case(name, kw, rank, world_size, ragged) for ragged in (False, True)
              for name, kw in cases])
    flag = torch.tensor(0 if ok else 1)
    dist.all_reduce(flag)  # every rank fails if any rank failed
    dist.destroy_process_group()
    sys.exit(int(flag.item() > 0))


if __name__ == "__main__":
    main()
