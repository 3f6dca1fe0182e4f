"""Pretrained audio towers: LAION-CLAP's HTS-AT (ClapAudioModel) and the Audio
Spectrogram Transformer (ASTModel), with the front end each checkpoint was
trained with (its feature extractor's sample rate and mel settings).

Input: a waveform [B, T] (e.g. the W channel of FOA audio, at ``sample_rate``;
resampled with torchaudio to the checkpoint's rate), or a feature stack
[B, C, F, T] the family computed (F mel bins, C = ``in_channels``).
Output: pooled [B, D] and frame features [B, T', D] for a temporal encoder.

``in_channels=7``: T-SALM's spatial branch, the same weights with the patch
embedding widened from 1 to 7 input channels (4 log-mels + 3 intensity
vectors), each channel's kernel the original / 7, so an input replicated
over the 7 channels gets the original response.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF
from transformers import ASTFeatureExtractor, ASTModel, ClapAudioModel, ClapFeatureExtractor

from models.towers.loading import AUDIO_TYPES, load_tower, read_preprocessor_config
from models.towers.trainable import Tower
from models.towers.vision import fold_patch_embedding


@dataclass
class AudioOutput:
    features: torch.Tensor  # [B, D] pooled
    frames: torch.Tensor    # [B, T', D] per time step (frequency averaged)


def _extractor(backbone, preprocess):
    cls = ClapFeatureExtractor if isinstance(backbone, ClapAudioModel) else ASTFeatureExtractor
    keys = {k: v for k, v in (preprocess or {}).items()
            if not k.startswith(("feature_extractor_type", "processor_class"))}
    return cls(**keys)


class AudioTower(Tower):
    def __init__(self, settings, key="model.audio", backbone=None, preprocess=None, in_channels=1,
                 sample_rate=None):
        settings = dict(settings or {})
        if backbone is None:
            backbone, path = load_tower(settings.get("pretrained"), AUDIO_TYPES, key + ".pretrained")
            preprocess = read_preprocessor_config(path) if preprocess is None else preprocess
        if not isinstance(backbone, (ClapAudioModel, ASTModel)):
            raise ValueError(f"{key}: AudioTower takes ClapAudioModel or ASTModel, "
                             f"got {type(backbone).__name__}")
        self_is_clap = isinstance(backbone, ClapAudioModel)
        if in_channels != 1:
            if self_is_clap and backbone.config.enable_fusion:
                raise ValueError(f"{key}: in_channels={in_channels} needs an unfused HTS-AT "
                                 "(e.g. laion/clap-htsat-unfused); this one has enable_fusion")
            _widen(backbone, in_channels)
        super().__init__(backbone, settings, key)
        self.is_clap, self.in_channels = self_is_clap, in_channels
        self.fe = _extractor(backbone, preprocess)
        self.model_rate = self.fe.sampling_rate
        self.sample_rate = sample_rate or self.model_rate
        if self.is_clap:
            fusion = self.fe.truncation == "fusion"
            # the extractor's own filter bank: slaney unless it fuses (see ClapFeatureExtractor)
            fb = self.fe.mel_filters if fusion else self.fe.mel_filters_slaney   # [n_freq, n_mels]
            self.register_buffer("mel_fb", torch.tensor(fb, dtype=torch.float32), persistent=False)
            self.register_buffer("window", torch.hann_window(self.fe.fft_window_size),
                                 persistent=False)
        self.hidden_size = backbone.config.hidden_size

    # --- front ends: waveform -> the checkpoint's features ------------------------------

    def clap_mel(self, wav):
        """[B, T] at the model's rate -> log-mel [B, 1, frames, mels] as
        ClapFeatureExtractor computes it (repeat-padded to max_length_s; a
        longer clip keeps its start: cropping is the data pipeline's choice)."""
        n = self.fe.nb_max_samples
        if wav.shape[1] < n and self.fe.padding in ("repeatpad", "repeat"):
            reps = n // wav.shape[1] if self.fe.padding == "repeatpad" else n // wav.shape[1] + 1
            wav = wav.repeat(1, reps)[:, :n]
        wav = F.pad(wav[:, :n], (0, max(0, n - wav.shape[1])))
        spec = torch.stft(wav.float(), self.fe.fft_window_size, self.fe.hop_length,
                          window=self.window, center=True, pad_mode="reflect",
                          return_complex=True).abs() ** 2            # [B, freq, frames]
        mel = torch.einsum("bft,fm->btm", spec, self.mel_fb).clamp_min(1e-10)
        mel = 10.0 * torch.log10(mel)                                  # [B, frames, mels]
        if self.fe.top_db is not None:
            mel = torch.maximum(mel, mel.amax((1, 2), keepdim=True) - self.fe.top_db)
        mel = mel.unsqueeze(1)
        return mel.expand(-1, 4, -1, -1) if self.fe.truncation == "fusion" else mel

    def ast_fbank(self, wav):
        """[B, T] at the model's rate -> [B, max_length, mels] as ASTFeatureExtractor."""
        out = []
        for w in wav.float():
            fb = kaldi.fbank(w.unsqueeze(0), sample_frequency=self.model_rate, window_type="hanning",
                             num_mel_bins=self.fe.num_mel_bins)         # [frames, mels]
            fb = F.pad(fb[:self.fe.max_length], (0, 0, 0, max(0, self.fe.max_length - len(fb))))
            out.append(fb)
        fb = torch.stack(out)
        if self.fe.do_normalize:
            fb = (fb - self.fe.mean) / (self.fe.std * 2)
        return fb

    def features(self, wav):
        if self.sample_rate != self.model_rate:
            wav = AF.resample(wav, self.sample_rate, self.model_rate)
        return self.clap_mel(wav) if self.is_clap else self.ast_fbank(wav)

    # --- the encoders ----------------------------------------------------------------

    def forward(self, x):
        """x: waveform [B, T] (in_channels 1) or features [B, C, F, T]."""
        if x.dim() == 2:
            if self.in_channels != 1:
                raise ValueError(f"{self.key}: a {self.in_channels}-channel tower takes a feature "
                                 "stack [B, C, F, T], not a waveform")
            feats = self.features(x)
        elif x.dim() == 4:
            if x.shape[1] != self.in_channels:
                raise ValueError(f"{self.key}: expected {self.in_channels} feature channels, "
                                 f"got {x.shape[1]}")
            feats = x.transpose(2, 3)   # [B, C, T, F]
        else:
            raise ValueError(f"{self.key}: expected a waveform [B, T] or features [B, C, F, T], "
                             f"got shape {tuple(x.shape)}")
        return self._clap(feats) if self.is_clap else self._ast(feats)

    def _clap(self, feats):
        """[B, C, frames, mels] -> HTS-AT. Its last feature map comes back with
        the time chunks unfolded: [B, D, F', T']."""
        B = len(feats)
        is_longer = torch.zeros(B, 1, dtype=torch.bool, device=feats.device)
        out = self.backbone(input_features=feats, is_longer=is_longer)
        frames = out.last_hidden_state.mean(2).transpose(1, 2)          # [B, T', D]
        return AudioOutput(features=out.pooler_output, frames=frames)

    def _ast(self, feats):
        """[B, frames, mels] or [B, C, frames, mels] -> AST, the patch sequence
        built here so a widened patch embedding takes C channels."""
        if feats.dim() == 3:
            feats = feats.unsqueeze(1)
        m = self.backbone
        x = m.embeddings.patch_embeddings.projection(feats.transpose(2, 3))  # [B, D, F', T']
        f_dim, t_dim = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        e = m.embeddings
        x = torch.cat([e.cls_token.expand(len(x), -1, -1), e.distillation_token.expand(len(x), -1, -1),
                       x], 1)
        if x.shape[1] != e.position_embeddings.shape[1]:
            raise ValueError(f"{self.key}: AST patch grid {f_dim}x{t_dim} does not match the "
                             f"checkpoint's {e.position_embeddings.shape[1] - 2} positions "
                             f"(pad the features to max_length={m.config.max_length} frames)")
        x = e.dropout(x + e.position_embeddings)
        for layer in m.layers:
            x = layer(x, None)
        x = m.layernorm(x)
        frames = x[:, 2:].reshape(len(x), f_dim, t_dim, -1).mean(1)       # [B, T', D]
        return AudioOutput(features=(x[:, 0] + x[:, 1]) / 2, frames=frames)


def _widen(backbone, in_channels):
    if isinstance(backbone, ClapAudioModel):
        pe = backbone.audio_encoder.patch_embed
        pe.proj = fold_patch_embedding(pe.proj, in_channels)
        backbone.config.patch_embed_input_channels = in_channels
    else:
        pe = backbone.embeddings.patch_embeddings
        pe.projection = fold_patch_embedding(pe.projection, in_channels)
