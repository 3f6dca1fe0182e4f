"""Event slots (model.event_slots, issue 13): the first and the second event
of a clip or a caption as two vectors of their own.

Why: with diverse captions ("before B, A", "B follows A") order is learned
only through the audio <-> text contrast, and neither side has order
features until the other has: nothing starts. The slots give each side a
direct target per event (losses/sclap_loss.py, L_evt: slot k against the
single-event caption of the clip's k-th event), which needs no order
feature on the other side, and the triplet embeddings carry the slots, so
the order the slots learn is what tells pos from neg_t.

    AudioSlots  the temporal encoder's chunk tokens [N, n_chunks, D]: the
                mean of the first half's and of the second half's, each
                through its own Linear -> [N, 2, D]
    TextSlots   two learned queries attending (masked) over the caption's
                token states [N, L, D] -> [N, 2, D]
    slot_structured(main [N, D], slots [N, 2, D]) -> [N, 3D], unit norm:
                normalize(cat(normalize(main), normalize(s1), normalize(s2))),
                so the dot product of two such vectors is
                (cos(main) + cos(slot 1) + cos(slot 2)) / 3.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

N_SLOTS = 2


class AudioSlots(nn.Module):
    def __init__(self, dim, n_chunks):
        super().__init__()
        if n_chunks < 2 or n_chunks % 2:
            raise ValueError(f"model.event_slots: the audio slots are the first and second half of "
                             f"the temporal encoder's chunks; model.n_chunks must be even, got {n_chunks}")
        self.half = n_chunks // 2
        self.proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(N_SLOTS))

    def forward(self, tokens):
        halves = (tokens[:, :self.half].mean(1), tokens[:, self.half:].mean(1))    # [N, D] each
        return torch.stack([p(h) for p, h in zip(self.proj, halves)], dim=1)       # [N, 2, D]


class TextSlots(nn.Module):
    def __init__(self, dim, heads=4):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(N_SLOTS, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads if dim % heads == 0 else 1, batch_first=True)
        self.proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(N_SLOTS))

    def forward(self, tokens, mask):
        kv = self.norm(tokens)                                                       # [N, L, D]
        q = self.queries.to(kv.dtype).unsqueeze(0).expand(kv.shape[0], -1, -1)     # [N, 2, D]
        h, _ = self.attn(q, kv, kv, key_padding_mask=~mask, need_weights=False)     # [N, 2, D]
        return torch.stack([p(h[:, k]) for k, p in enumerate(self.proj)], dim=1)   # [N, 2, D]


def slot_structured(main, slots):
    """[N, D], [N, 2, D] -> [N, 3D] unit vectors (see the module docstring)."""
    parts = [F.normalize(main, dim=-1)] + [F.normalize(s, dim=-1) for s in slots.unbind(-2)]
    return F.normalize(torch.cat(parts, dim=-1), dim=-1)
