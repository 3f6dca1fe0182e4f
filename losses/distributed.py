"""Differentiable collectives for the contrastive losses.

Every loss in this package is written so that, after DDP averages the
gradients over ranks (mean all-reduce), each parameter receives exactly the
gradient of the single-process loss on the global batch. The helpers below
carry gradients back to the rank that owns each feature:

- ``all_gather_with_grad``: forward all-gathers, backward *sums* the incoming
  gradient over ranks (all-reduce) and returns this rank's slice. Summing is
  what makes it exact: rank r's shard is used by every rank's loss, so its
  gradient is the sum of all those contributions.
- ``neighbour_exchange`` / ``neighbour_exchange_bidir``: ring P2P exchange;
  backward runs the same exchange in reverse so each received tensor's
  gradient goes home to the rank that sent it.

``torch.distributed.nn.all_gather`` (torch 2.14) has the same semantics: its
backward sums each rank's slice over ranks with reduce_scatter on NCCL and
with all_to_all + sum on other backends, i.e. a different code path per
backend. The version here uses all_reduce on every backend (it moves the
whole [N, D] gradient instead of one slice, negligible next to the encoders)
so the path checked by the gloo test is the one that runs on NCCL.
All shards must have the same shape on every rank (DistributedSampler with
``drop_last``), as all_gather requires.
"""
import torch
import torch.distributed as dist

from models.grad import scale_grad  # noqa: F401  (re-exported for the losses)


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rank, world_size):
        ctx.rank, ctx.n = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)  # [world_size * n, ...]

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None, None


def all_gather_with_grad(x, rank, world_size):
    """[n, ...] on each rank -> [world_size * n, ...], differentiable."""
    return _AllGatherWithGrad.apply(x, rank, world_size)


def all_gather_no_grad(x, rank, world_size):
    """[n, ...] -> [world_size * n, ...]; other ranks' shards are constants,
    this rank's slice is ``x`` itself so its gradient still flows."""
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0)


def gather_for_loss(x, rank, world_size, gather_with_grad=False):
    """[n, ...] on each rank -> [world_size * n, ...] in rank order, for a loss
    computed over the global batch on every rank. Integer tensors (ids,
    masks) carry no gradient. ``gather_with_grad``: every rank's gradient
    goes home (``all_gather_with_grad``). Otherwise only this rank's slice
    keeps its gradient, scaled by world_size to undo DDP's mean (every rank
    computes the same loss, so the sum over ranks is not needed)."""
    if world_size == 1:
        return x
    if not x.is_floating_point():
        return all_gather_no_grad(x, rank, world_size)
    if gather_with_grad:
        return all_gather_with_grad(x, rank, world_size)
    return all_gather_no_grad(scale_grad(x, float(world_size)), rank, world_size)


def _p2p(sends, recvs):
    """sends: [(tensor, peer)], recvs: [(buffer, peer)]; waits for all."""
    ops = [dist.P2POp(dist.isend, t.contiguous(), peer) for t, peer in sends]
    ops += [dist.P2POp(dist.irecv, buf, peer) for buf, peer in recvs]
    for req in dist.batch_isend_irecv(ops):
        req.wait()


class _NeighbourExchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, from_rank, to_rank, x):
        ctx.from_rank, ctx.to_rank = from_rank, to_rank
        out = torch.empty_like(x)
        _p2p([(x, to_rank)], [(out, from_rank)])
        return out

    @staticmethod
    def backward(ctx, grad):
        # The gradient of what we received goes back to its sender; we get
        # the gradient of what we sent from its receiver.
        return (None, None) + (_NeighbourExchange.apply(ctx.to_rank, ctx.from_rank, grad),)


def neighbour_exchange(from_rank, to_rank, x):
    """Send ``x`` to ``to_rank``, return what ``from_rank`` sent us."""
    return _NeighbourExchange.apply(from_rank, to_rank, x)


class _NeighbourExchangeBidir(torch.autograd.Function):
    @staticmethod
    def forward(ctx, left, right, to_left, to_right):
        ctx.left, ctx.right = left, right
        from_left, from_right = torch.empty_like(to_right), torch.empty_like(to_left)
        _p2p([(to_left, left), (to_right, right)], [(from_left, left), (from_right, right)])
        return from_left, from_right

    @staticmethod
    def backward(ctx, grad_from_left, grad_from_right):
        # Reverse exchange: the gradient of from_left returns to the left
        # rank, where it is the gradient of that rank's to_right, and so on.
        g_to_left, g_to_right = _NeighbourExchangeBidir.apply(
            ctx.left, ctx.right, grad_from_left, grad_from_right)
        return None, None, g_to_left, g_to_right


def neighbour_exchange_bidir(left, right, to_left, to_right):
    """Send ``to_left`` to ``left`` and ``to_right`` to ``right`` at once;
    return (what left sent right, what right sent left). Needs left != right
    (world_size >= 3), otherwise the two messages to one peer are ambiguous."""
    return _NeighbourExchangeBidir.apply(left, right, to_left, to_right)
