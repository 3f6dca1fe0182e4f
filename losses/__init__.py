from losses.clip_loss import ClipLoss
from losses.siglip_loss import SigLipLoss
