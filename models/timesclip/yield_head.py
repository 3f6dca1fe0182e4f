"""Stage 2: a whole season [36, V] -> yield, reusing the stage-1 TimesCLIP
encoder (seed 003, "connect the two stages"):

- ``use_first_last``: the encoder's per-variate embeddings of the first and
  of the last half (it was trained on half-season windows), plan A;
- ``use_forecast_error``: last half minus the encoder's forecast of it from
  the first half -- how the season departed from what its start predicted,
  plan B;
- ``use_raw``: the standardised series itself (the seed fuses raw data and
  forecast error).
A small MLP head plus a linear path (a ridge-like skip, so the linear signal
the honest baseline finds is not left for the MLP to rediscover) maps the
concatenation to standardised yield.
"""
import torch
import torch.nn as nn


class YieldModel(nn.Module):
    def __init__(self, encoder, n_steps=36, use_first_last=True, use_forecast_error=True,
                 use_raw=True, hidden=128, dropout=0.1):
        super().__init__()
        if not (use_first_last or use_forecast_error or use_raw):
            raise ValueError("YieldModel: all feature groups are off")
        self.encoder = encoder
        h, p, v = encoder.input_len, encoder.pred_len, encoder.n_variates
        if h + p > n_steps:
            raise ValueError(f"YieldModel: encoder windows {h}+{p} exceed {n_steps} steps")
        self.use_first_last, self.use_forecast_error, self.use_raw = \
            use_first_last, use_forecast_error, use_raw
        dim = (2 * v * encoder.feature_dim if use_first_last else 0) \
            + (p * v if use_forecast_error else 0) + (n_steps * v if use_raw else 0)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden),
                                  nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.linear = nn.Linear(dim, 1)

    def features(self, x, keys=None):
        """x [B, T, V] -> [B, F]. ``keys``: host-side names of the B seasons;
        a window's name adds its start (the frozen chart cache's keys)."""
        h, p, t = self.encoder.input_len, self.encoder.pred_len, x.shape[1]
        first, second = x[:, :h], x[:, h:h + p]
        parts = []
        enc1 = self.encoder.encode(first, _window_keys(keys, 0))
        if self.use_first_last:
            enc2 = self.encoder.encode(x[:, t - h:], _window_keys(keys, t - h))
            parts += [enc1["variates"].flatten(1), enc2["variates"].flatten(1)]   # [B, V*D] x 2
        if self.use_forecast_error:
            err = second - self.encoder.forecast_from(enc1, first)                  # [B, P, V]
            parts.append(err.flatten(1))
        if self.use_raw:
            parts.append(x.flatten(1))
        return torch.cat([q.float() for q in parts], 1)

    def forward(self, batch):
        x = batch["x"] if isinstance(batch, dict) else batch        # [B, T, V]
        f = self.norm(self.features(x, batch.get("key") if isinstance(batch, dict) else None))  # [B, F]
        return (self.head(f) + self.linear(f)).squeeze(-1)          # [B]


def _window_keys(keys, start):
    return None if keys is None else [(k, start) for k in keys]
