"""Box-consistent views of a grounding sample, with torchvision.transforms.v2.

Geometry (crop, resize, flip) runs through ``transforms.v2.functional`` on the
PIL image and a ``tv_tensors.BoundingBoxes`` together, so the boxes follow
the pixels by construction (torchvision clamps them to the crop). On a PIL
image those calls are PIL's own crop/resize/transpose, the kernels the loader
used before, so the generated data's views are the same pixels as before.

Training (seed 004 sec. 7), every draw from the item's ``item_rng``:
- a crop of scale in [crop_scale_min, 1] that keeps every box the caption
  names (torchvision's RandomIoUCrop may cut a named box away: the phrase
  would lose its object), then the resize to the model's input;
- a horizontal flip with probability ``hflip``; the caller swaps "left" and
  "right" in the caption;
- colour: ``ColorJitter`` (brightness, contrast, saturation; no hue: captions
  name colours) and a photometric ``RandAugment`` (see below). These draw from
  torch's generator, seeded from the item's rng inside ``fork_rng``, so an
  item's view is the same in any worker and after a resume, and the global
  torch RNG is left as it was.

Off by default (``color_jitter: 0``, ``randaugment: 0``): the generated
scenes are told apart by colour; turn them on for photographs.
"""
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.ops import box_area
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

# RandAugment's ops that move no pixel and keep hues (ALBEF's photometric set
# plus Contrast): v2's RandAugment refuses boxes, so a shear or rotation would
# move the image under them; Color/Solarize/Posterize change the colours the
# captions name.
PHOTOMETRIC_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness", "Contrast")


class PhotometricRandAugment(v2.RandAugment):
    _AUGMENTATION_SPACE = {k: v for k, v in v2.RandAugment._AUGMENTATION_SPACE.items()
                           if k in PHOTOMETRIC_OPS}


def crop_keeping(rng, W, H, keep, scale_min):
    """(left, top, width, height) of a crop of scale in [scale_min, 1] of a
    W x H image that holds every box of keep [k, 4] xyxy."""
    s = rng.uniform(scale_min, 1.0)
    cw, ch = int(round(W * s)), int(round(H * s))
    if len(keep):
        ux0, uy0 = keep[:, 0].min(), keep[:, 1].min()
        ux1, uy1 = keep[:, 2].max(), keep[:, 3].max()
        cw, ch = max(cw, int(np.ceil(ux1 - ux0))), max(ch, int(np.ceil(uy1 - uy0)))
        lox, hix = max(0, int(np.ceil(ux1)) - cw), min(int(ux0), W - cw)
        loy, hiy = max(0, int(np.ceil(uy1)) - ch), min(int(uy0), H - ch)
    else:
        lox, hix, loy, hiy = 0, W - cw, 0, H - ch
    x0 = int(rng.integers(lox, max(lox, hix) + 1))
    y0 = int(rng.integers(loy, max(loy, hiy) + 1))
    return x0, y0, cw, ch


class View:
    """``view(img, boxes, n_keep, rng)`` -> (PIL image S x S, boxes [n, 4] in
    its pixels, kept [n] share of each box's area inside the crop, flipped).
    rng None: the whole image resized, nothing random."""

    def __init__(self, size, crop_scale_min=1.0, hflip=0.0, color_jitter=0.0, randaugment=0,
                 randaugment_magnitude=9):
        self.size, self.crop_scale_min, self.hflip = size, crop_scale_min, hflip
        self.colour = []
        if color_jitter > 0:
            self.colour.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter,
                                              saturation=color_jitter))
        if randaugment > 0:
            self.colour.append(PhotometricRandAugment(num_ops=randaugment, magnitude=randaugment_magnitude))

    def __call__(self, img, boxes, n_keep=0, rng=None):
        W, H = img.size
        bb = tv_tensors.BoundingBoxes(torch.as_tensor(np.asarray(boxes, np.float64)).reshape(-1, 4),
                                      format="XYXY", canvas_size=(H, W))
        area = box_area(bb.as_subclass(torch.Tensor))
        kept = torch.ones(len(bb))
        if rng is not None and self.crop_scale_min < 1:
            left, top, w, h = crop_keeping(rng, W, H, bb[:n_keep].numpy(), self.crop_scale_min)
            img, bb = TF.crop(img, top, left, h, w), TF.crop(bb, top, left, h, w)
            kept = box_area(bb.as_subclass(torch.Tensor)) / area.clamp_min(1e-9)
        img, bb = TF.resize(img, [self.size, self.size]), TF.resize(bb, [self.size, self.size])
        flipped = rng is not None and rng.random() < self.hflip
        if flipped:
            img, bb = TF.horizontal_flip(img), TF.horizontal_flip(bb)
        if rng is not None and self.colour:
            # its own stream (spawn leaves the item's stream as it was: masks draw the same)
            seed = int(rng.spawn(1)[0].integers(2 ** 63))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for t in self.colour:
                    img = t(img)
        return img, bb.as_subclass(torch.Tensor).float(), kept, flipped
