"""Worker for tests/test_losses_distributed.py, run under
``torchrun --standalone --nproc_per_node=W`` (gloo, CPU).

Every rank builds the same fixed random global batch and computes the
distributed loss on its shard, then backward. A shared "parameter" tensor
holds the raw features of the whole batch; rank r normalises and uses rows
of shard r only, so its gradient lands on those rows. Checks against the
single-process loss on the whole batch:
  - loss: mean over ranks of the per-rank losses == global loss;
  - gradients: mean over ranks (what DDP's all-reduce computes) of every
    parameter's gradient == its single-process gradient, i.e. for each
    shard, (its rank's input gradient) / world_size == the global-batch
    gradient of that shard; logit scale (and bias) likewise.
Prints one line per case and rank; exits with status 1 on every rank if any
rank saw a mismatch.
"""
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from losses import ClipLoss, SigLipLoss  # noqa: E402
from losses.distributed import gather_for_loss  # noqa: E402

ATOL = 1e-5
N_LOCAL, DIM = 6, 8


def global_batch(world_size, with_ids):
    g = torch.Generator().manual_seed(1234)
    n = N_LOCAL * world_size
    raw_a = torch.randn(n, DIM, generator=g, dtype=torch.float64).float()
    raw_b = torch.randn(n, DIM, generator=g, dtype=torch.float64).float()
    # Some repeated ids across ranks, so multi-positive targets cross shards.
    ids = torch.randint(0, n // 2, (n,), generator=g) if with_ids else None
    return raw_a, raw_b, ids


class GatheredLoss(torch.nn.Module):
    """A global-batch loss written with gather_for_loss, as the family losses
    are: ids (integers, no gradient) give multi-positive targets."""

    def __init__(self, rank, world_size, gather_with_grad):
        super().__init__()
        self.rank, self.world_size, self.with_grad = rank, world_size, gather_with_grad

    def forward(self, a, b, scale, ids=None):
        g = lambda x: gather_for_loss(x, self.rank, self.world_size, self.with_grad)  # noqa: E731
        A, B, I = g(a), g(b), g(ids)                      # [N, D], [N, D], [N]
        logits = scale * A @ B.T                          # [N, N]
        target = (I[:, None] == I[None, :]).float()
        target = target / target.sum(1, keepdim=True)
        return -(target * logits.log_softmax(1) + target * logits.T.log_softmax(1)).sum(1).mean() / 2


def run_case(name, make_loss, siglip, with_ids, rank, world_size):
    raw_a, raw_b, ids = global_batch(world_size, with_ids)
    sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)

    def params():
        # Shared "model parameters": the raw features, scale and bias.
        return (raw_a.clone().requires_grad_(), raw_b.clone().requires_grad_(),
                torch.tensor(2.3, requires_grad=True), torch.tensor(-10.0, requires_grad=True))

    def forward(loss_fn, pa, pb, log_s, bias, rows, ids_rows):
        a, b = F.normalize(pa[rows], dim=-1), F.normalize(pb[rows], dim=-1)
        if siglip:
            return loss_fn(a, b, log_s.exp(), bias)
        return loss_fn(a, b, log_s.exp(), ids=ids_rows)

    # Single process, whole global batch.
    ref = params()
    ref_loss = forward(make_loss(0, 1), *ref, slice(None), ids)
    ref_loss.backward()

    # This rank: its shard only; backward; then DDP-style mean of grads.
    mine = params()
    loss = forward(make_loss(rank, world_size), *mine, sl, None if ids is None else ids[sl])
    loss.backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in mine]
    for gr in grads:
        dist.all_reduce(gr, op=dist.ReduceOp.SUM)
        gr /= world_size
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss, op=dist.ReduceOp.SUM)
    mean_loss /= world_size

    errs = []
    if not torch.allclose(mean_loss, ref_loss.detach(), atol=ATOL, rtol=0):
        errs.append(f"loss {mean_loss.item():.8f} vs {ref_loss.item():.8f}")
    for pname, gr, p in zip(("features_a", "features_b", "logit_scale", "logit_bias"), grads, ref):
        if siglip is False and pname == "logit_bias":
            continue
        if not torch.allclose(gr, p.grad, atol=ATOL, rtol=0):
            errs.append(f"grad {pname}: max |diff| {(gr - p.grad).abs().max().item():.3e}")
    status = "OK" if not errs else "FAIL: " + "; ".join(errs)
    print(f"[rank {rank}] {name}: loss {loss.item():.6f} (global {ref_loss.item():.6f}) {status}",
          flush=True)
    return not errs


def main():
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    cases = []
    for with_ids in (False, True):
        tag = " +ids" if with_ids else ""
        cases += [
            (f"ClipLoss(){tag}", lambda r, w: ClipLoss(rank=r, world_size=w), False, with_ids),
            (f"ClipLoss(gather_with_grad){tag}",
             lambda r, w: ClipLoss(gather_with_grad=True, rank=r, world_size=w), False, with_ids),
            (f"ClipLoss(local_loss, gather_with_grad){tag}",
             lambda r, w: ClipLoss(local_loss=True, gather_with_grad=True, rank=r, world_size=w),
             False, with_ids),
        ]
    cases.append(("SigLipLoss", lambda r, w: SigLipLoss(rank=r, world_size=w), True, False))
    for with_grad in (False, True):
        cases.append((f"gather_for_loss(gather_with_grad={with_grad}) +ids",
                      lambda r, w, wg=with_grad: GatheredLoss(r, w, wg), False, True))
    ok = all([run_case(name, mk, sig, ids, rank, world_size) for name, mk, sig, ids in cases])
    flag = torch.tensor(0 if ok else 1)
    dist.all_reduce(flag)  # every rank fails if any rank failed
    dist.destroy_process_group()
    sys.exit(int(flag.item() > 0))


if __name__ == "__main__":
    main()
