"""sCLAP front end (BRIEF sec. 3), with torchaudio.

FOA [B, 4, n] (ACN W, Y, Z, X) ->
    logmel [B, 4, T, M]   log-mel of every channel (the SED branch uses channel 0, W)
    iv     [B, 3, T, M]   active intensity Re(W* . (X, Y, Z)), unit-normalised per
                          time-frequency bin, then averaged over each mel band
The spatial (DOA) branch gets cat(logmel, iv) = 7 channels.

Log-mels are standardised per clip with the W channel's mean and std, applied
to all four channels, so level differences between channels (which carry
direction) survive while the recording gain does not.
"""
import torch
import torch.nn as nn
import torchaudio


class SpatialFrontEnd(nn.Module):
    def __init__(self, sample_rate=16000, n_fft=512, hop_length=320, n_mels=64, f_min=20.0,
                 f_max=8000.0):
        super().__init__()
        self.stft = torchaudio.transforms.Spectrogram(n_fft=n_fft, hop_length=hop_length,
                                                      window_fn=torch.hann_window, power=None)
        fb = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate,
                                                   norm="slaney", mel_scale="slaney")  # [K, M]
        self.register_buffer("fb", fb, persistent=False)
        # band-averaging weights for the intensity vectors: each mel band's weights sum to 1
        self.register_buffer("fb_avg", fb / fb.sum(0, keepdim=True).clamp_min(1e-8), persistent=False)
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=80.0)

    @torch.no_grad()
    def forward(self, foa):
        spec = self.stft(foa.float())                           # [B, 4, K, T] complex
        power = spec.real ** 2 + spec.imag ** 2
        mel = torch.einsum("bckt,km->bctm", power, self.fb)     # [B, 4, T, M]
        logmel = self.to_db(mel + 1e-10)
        mu = logmel[:, :1].mean(dim=(2, 3), keepdim=True)
        sd = logmel[:, :1].std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
        logmel = (logmel - mu) / sd
        w = spec[:, 0]                                          # [B, K, T]
        # ACN order W, Y, Z, X -> intensity along (x front, y left, z up)
        iv = torch.stack([(w.conj() * spec[:, c]).real for c in (3, 1, 2)], dim=1)  # [B, 3, K, T]
        iv = iv / iv.norm(dim=1, keepdim=True).clamp_min(1e-12)
        iv = torch.einsum("bckt,km->bctm", iv, self.fb_avg)     # [B, 3, T, M]
        return logmel, iv
