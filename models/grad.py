"""The one gradient-scaling autograd function of the tree.

``scale_grad(x, f)`` is the identity in forward and multiplies the gradient
by ``f`` in backward. The contrastive losses use it to undo DDP's mean over
ranks (``losses/clip_loss.py``, f = world size); ``reverse_grad`` is seed
002's GradientReversal (f = -lambda) in front of sCLAP's modality classifier.
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


def reverse_grad(x, lambda_=1.0):
    """GradientReversal (Ganin & Lempitsky): identity in forward, gradient x -lambda_."""
    return ScaleGrad.apply(x, -lambda_)
