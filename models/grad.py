"""The one gradient-scaling autograd function of the tree.

``scale_grad(x, f)`` is the identity in forward and multiplies the gradient
by ``f`` in backward. The contrastive losses use it to undo DDP's mean over
ranks (``losses/clip_loss.py``, f = world size); sCLAP's GradientReversal
(seed 002, f = -lambda) wraps it in front of the modality classifier.
"""
import torch


class ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def scale_grad(x, factor):
    """Identity in forward; multiplies the gradient by ``factor``."""
    return ScaleGrad.apply(x, factor)

