"""SequenceSimilarity (seed 000; seed 001 sec. 3.5 and 5.3).

Scores radar feature sequences against text token sequences instead of one
pooled vector each, so that *when* something happens in the radar clip and
*where* it is said in the caption can both count.

  global     cosine of the mask-aware mean of each sequence.
  local      sliding windows of radar tokens at three scales (short / medium /
             long = w, 4w, 16w tokens, seed 000 sec. 2) against the caption's
             mean feature; a soft maximum over windows, averaged over scales.
  attention  cross-modal token-wise alignment: every text token attends over
             the radar tokens (and every radar token over the text tokens);
             mean cosine to the attended feature, both directions averaged.
  temporal   a monotonic alignment (a DTW-style dynamic programme) of
             the text tokens, in caption order, to radar time: token k must be
             matched at a time no earlier than token k-1. It is computed for
             every radar x caption pair, so it ranks negatives, and an
             order-swapped caption ("jump then walk" for a walk-then-jump clip)
             cannot find a monotonic path through the right moments.
  combined   the mean of the four.

Radar sequences first get hierarchical features (seed 000 sec. 2.2): each
token is fused with its short-, medium- and long-window context.

All scores are cosines in [-1, 1]. ``forward`` returns the [B_r, B_t] matrix
for all pairs (text processed in chunks, each chunk fully vectorised);
``paired`` scores radar i against text i only ([B]), which is what hard
negatives and the temporal-order metric need.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

TYPES = ("global", "local", "attention", "temporal", "combined")


def masked_mean(x, mask):
    """x [..., N, D], mask [..., N] -> [..., D]."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(-2) / m.sum(-2).clamp_min(1.0)


def window_features(x, mask, window):
    """Mask-aware sliding-window means, stride window // 2.
    x [B, T, D], mask [B, T] -> windows [B, W, D], window mask [B, W]."""
    B, T, D = x.shape
    window = max(1, min(window, T))
    stride = max(1, window // 2)
    m = mask.to(x.dtype).unsqueeze(1)  # [B, 1, T]
    num = F.avg_pool1d((x * mask.unsqueeze(-1).to(x.dtype)).transpose(1, 2), window, stride)
    den = F.avg_pool1d(m, window, stride)  # [B, 1, W] share of valid frames
    win = (num / den.clamp_min(1e-6)).transpose(1, 2)  # [B, W, D]
    return win, den[:, 0] > 0


def monotonic_alignment(sim, rmask, tmask):
    """Best monotonic alignment of text tokens (in caption order) to radar time.

    sim [..., Tr, Lt] token cosines, rmask [..., Tr], tmask [..., Lt].
    V_k(t) = sim(t, k) + max_{t' <= t} V_{k-1}(t'), masked text tokens skipped;
    the score is max_t V_K(t) / (number of valid text tokens): the mean cosine
    along the best order-preserving path (a DTW in which radar time may be
    skipped). A hard maximum, not soft-DTW's logsumexp, because the soft
    version adds an entropy term that grows with the number of paths, i.e. it
    would favour long clips over short ones in retrieval. The gradient flows
    along the best path (like max-pooling).
    """
    # A masked text token adds 0 and one more prefix-max, which changes neither
    # the later V nor the final max: so masks need no branch in the loop.
    last = int(tmask.any(tuple(range(tmask.dim() - 1))).nonzero().max()) + 1 if tmask.any() else 0
    # unbind, not sim[..., k]: the backward of one slice per step would write a
    # full-size zero tensor each time; text-major first, so each row the loop
    # reads is contiguous (the same numbers, less memory traffic). The masks are
    # written into that copy in place (it is the loop's own tensor), not into
    # two more full-size ones.
    rows = sim[..., :last].transpose(-1, -2).to(torch.float32, memory_format=torch.contiguous_format,
                                                copy=True)                  # [..., Lt, Tr], its own
    rows.masked_fill_(~tmask[..., :last].unsqueeze(-1), 0.0)
    # Padded radar time after the last valid frame (every mask the loaders
    # make) never reaches a valid frame's V (the prefix max looks back only),
    # and the final max leaves it out: it needs no fill. Padding between valid
    # frames does, or a path could pass through it.
    if not bool((rmask[..., 1:] <= rmask[..., :-1]).all()):
        rows.masked_fill_(~rmask.unsqueeze(-2), -1e4)
    V = torch.zeros_like(rows[..., 0, :])   # [..., Tr] credit before the first token
    for s_k in rows.unbind(-2):
        V = s_k + torch.cummax(V, dim=-1).values
    score = V.masked_fill(~rmask, -1e4).max(-1).values
    return score / tmask.sum(-1).clamp_min(1).to(score.dtype)


class SequenceSimilarity(nn.Module):
    def __init__(self, embed_dim, similarity_type="combined", window_size=4, temperature=0.07,
                 hierarchical=True, chunk_size=64):
        super().__init__()
        if similarity_type not in TYPES:
            raise ValueError(f"sequence_similarity_type must be one of {TYPES}, got {similarity_type!r}")
        self.similarity_type = similarity_type
        self.window_size = window_size
        self.temperature = temperature
        self.chunk_size = chunk_size
        self.scales = (window_size, 4 * window_size, 16 * window_size)
        # Zero-initialised residual fusion: training starts from the plain sequence.
        self.fuse = nn.Linear(embed_dim * len(self.scales), embed_dim) if hierarchical else None
        if self.fuse is not None:
            nn.init.zeros_(self.fuse.weight)
            nn.init.zeros_(self.fuse.bias)

    def hierarchical(self, seq, mask):
        """Fuse every radar token with its short/medium/long-window context.
        seq [B, T, D] -> [B, T, D] (same length: stride-1 windows, 'same' padding)."""
        if self.fuse is None:
            return seq
        m = mask.unsqueeze(1).to(seq.dtype)  # [B, 1, T]
        x = (seq * mask.unsqueeze(-1).to(seq.dtype)).transpose(1, 2)  # [B, D, T]
        ctx = []
        for w in self.scales:
            w = min(w, seq.shape[1])
            pad = (w // 2, w - 1 - w // 2)
            num = F.avg_pool1d(F.pad(x, pad), w, 1)
            den = F.avg_pool1d(F.pad(m, pad), w, 1).clamp_min(1e-6)
            ctx.append((num / den).transpose(1, 2))
        return seq + self.fuse(torch.cat(ctx, -1))

    def prepare(self, radar_seq, radar_mask, text_tok, text_mask):
        """Normalised inputs shared by every score: call once, then score many pairs."""
        r = F.normalize(self.hierarchical(radar_seq, radar_mask), dim=-1)
        t = F.normalize(text_tok, dim=-1)
        rg = F.normalize(masked_mean(r, radar_mask), dim=-1)
        tg = F.normalize(masked_mean(t, text_mask), dim=-1)
        wins = None
        if self.similarity_type in ("local", "combined"):
            wins = [(F.normalize(w, dim=-1), m)
                    for w, m in (window_features(r, radar_mask, s) for s in self.scales)]
        return dict(r=r, rm=radar_mask, t=t, tm=text_mask, rg=rg, tg=tg, wins=wins)

    # --- one score for a block of pairs --------------------------------------
    # ``pairs``: True -> radar i vs text i ([B]); False -> all radar x this text chunk.
    def _einsum(self, a, b, pairs, eq_pair, eq_all):
        return torch.einsum(eq_pair if pairs else eq_all, a, b)

    def _global(self, P, sl, pairs):
        return self._einsum(P["rg"], P["tg"][sl], pairs, "bd,bd->b", "rd,cd->rc")

    def _local(self, P, sl, pairs):
        tg = P["tg"][sl]
        scores = []
        for win, wm in P["wins"]:
            s = self._einsum(win, tg, pairs, "bwd,bd->bw", "rwd,cd->rcw")  # [..., W]
            wm_ = wm if pairs else wm.unsqueeze(1)
            s = s.float().masked_fill(~wm_, -1e4)
            tau = self.temperature
            scores.append(tau * torch.logsumexp(s / tau, -1)
                          - tau * torch.log(wm_.sum(-1).clamp_min(1).float()))
        return torch.stack(scores).mean(0)

    def _token_sims(self, P, sl, pairs):
        t, tm = P["t"][sl], P["tm"][sl]
        sim = self._einsum(P["r"], t, pairs, "btd,bld->btl", "rtd,cld->rctl")  # [..., Tr, Lt]
        rm = P["rm"] if pairs else P["rm"].unsqueeze(1)       # [..., Tr]
        tm = tm if pairs else tm.unsqueeze(0)                 # [..., Lt]
        return sim.float(), rm, tm

    def _attention(self, P, sl, pairs):
        sim, rm, tm = self._token_sims(P, sl, pairs)
        tau = self.temperature
        # text -> radar: each text token's softmax-weighted cosine over radar time.
        a = torch.softmax((sim / tau).masked_fill(~rm.unsqueeze(-1), -1e4), dim=-2)
        t2r = (a * sim).sum(-2)  # [..., Lt]
        t2r = (t2r * tm).sum(-1) / tm.sum(-1).clamp_min(1)
        b = torch.softmax((sim / tau).masked_fill(~tm.unsqueeze(-2), -1e4), dim=-1)
        r2t = (b * sim).sum(-1)  # [..., Tr]
        r2t = (r2t * rm).sum(-1) / rm.sum(-1).clamp_min(1)
        return (t2r + r2t) / 2

    def _temporal(self, P, sl, pairs):
        sim, rm, tm = self._token_sims(P, sl, pairs)
        rm = rm.expand(sim.shape[:-1])
        tm = tm.expand(sim.shape[:-2] + sim.shape[-1:])
        return monotonic_alignment(sim, rm, tm)

    def scores(self, P, sl):
        """Similarities of every prepared radar clip against the captions in slice ``sl``."""
        return self._score(P, sl, False)

    def _score(self, P, sl, pairs):
        fns = {"global": self._global, "local": self._local,
               "attention": self._attention, "temporal": self._temporal}
        if self.similarity_type == "combined":
            return torch.stack([f(P, sl, pairs).float() for f in fns.values()]).mean(0)
        return fns[self.similarity_type](P, sl, pairs).float()

    # --- public API ------------------------------------------------------------
    def forward(self, radar_seq, radar_mask, text_tok, text_mask, prepared=None):
        """All pairs: radar [B_r, T, D] (+mask [B_r, T]) x text [B_t, L, D] (+mask)
        -> [B_r, B_t]."""
        P = prepared or self.prepare(radar_seq, radar_mask, text_tok, text_mask)
        Bt = P["t"].shape[0]
        cols = [self._score(P, slice(i, i + self.chunk_size), False)
                for i in range(0, Bt, self.chunk_size)]
        return torch.cat(cols, 1)

    def paired(self, radar_seq, radar_mask, text_tok, text_mask):
        """Radar i vs text i only: [B]."""
        P = self.prepare(radar_seq, radar_mask, text_tok, text_mask)
        return self._score(P, slice(None), True)
