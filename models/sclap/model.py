"""sCLAP model (seed 002, BRIEF sec. 3): per-sample features of triplets.

batch["feats"] [B, 3, 7, T, M] (pos, neg_t, neg_s; 4 log-mels + 3 intensity
channels), with a pretrained audio tower also batch["wave"] [B, 3, n] (the W
channel at data.sample_rate), and 3 spatial + 3 plain captions per item ->
    audio    [B, 3, D]  triplet embedding: proj(cat(joint, temporal)), or the
                        joint embedding sed + w * doa without the temporal encoder
                        (doa = projection of the pooled DOA map, plus one of the
                        DOA head's directions with the attention head)
    sed      [B, 3, D]  semantic embedding (W log-mel branch)
    text     [B, 3, D]  spatial captions
    plain    [B, 3, D]  plain captions (for L_sem)
    doa      [B, 3, 2, 3]
    mod_audio, mod_text [B, 3]  modality logits behind GradientReversal
With event_slots (models/sclap/slots.py) audio and text are slot-structured,
[B, 3, 3D] unit vectors normalize(cat(main, slot 1, slot 2)) (every loss,
metric and zero-shot prompt sees them: encode_audio / encode_text give them),
plus audio_slots, text_slots [B, 3, 2, D] and, when the batch has
event_captions, event [B, 3, 2, D] (those captions' main text embeddings);
plain stays the main text embedding [B, 3, D] (it meets sed in L_sem).
Nothing here mixes samples; all cross-sample terms live in losses/sclap_loss.py.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from losses.distributed import scale_grad
from models.sclap.audio import AttentionDOAHead, ConvBranch, DOAHead, TemporalAudioEncoder
from models.sclap.slots import AudioSlots, TextSlots, slot_structured
from models.sclap.towers import (align_time, branch_map, branch_width, build_audio_branches, clip_span,
                                 is_tower, leading, spatial_input)
from models.towers import build_text_encoder


class GradientReversal(nn.Module):
    """Seed 002's gradient reversal layer: identity forward; backward
    multiplies the gradient by -lambda_ (through scale_grad, the project's one
    gradient-scaling function)."""

    def __init__(self, lambda_=1.0):
        super().__init__()
        self.lambda_ = lambda_

    def forward(self, x):
        return scale_grad(x, -self.lambda_)

    def extra_repr(self):
        return f"lambda_={self.lambda_}"


class ModalityClassifier(nn.Module):
    """Seed 002's halving MLP (D -> D/2 -> ... -> D/16 -> 1), audio = 0, text = 1.
    Returns logits (the loss uses BCE-with-logits; chance level is ln 2)."""

    def __init__(self, dim, lambda_=1.0):
        super().__init__()
        self.reverse = GradientReversal(lambda_)
        dims = [dim, dim // 2, dim // 4, dim // 8, dim // 16]
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.classifier = nn.Sequential(*layers, nn.Linear(dims[-1], 1))

    def forward(self, x):
        return self.classifier(self.reverse(x)).squeeze(-1)


class TextHead(nn.Module):
    """Order-aware pooling of the text encoder's token features: a small
    Transformer with learned positions over [B, L, D], masked mean. A frozen
    MiniLM's mean-pooled sentence vector barely separates "A, then B" from
    "B, then A"; this layer learns to."""

    def __init__(self, dim, layers=1, heads=4, max_len=77, dropout=0.1):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout, batch_first=True,
                                           activation="gelu", norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, tokens, mask, return_tokens=False):
        """-> [B, D]; with return_tokens also the token states [B, L, D] (the text slots read them)."""
        h = self.transformer(tokens + self.pos[:, :tokens.shape[1]], src_key_padding_mask=~mask)
        m = mask.unsqueeze(-1).to(h.dtype)
        out = self.out((h * m).sum(1) / m.sum(1).clamp_min(1.0))
        return (out, h) if return_tokens else out


class SCLAP(nn.Module):
    def __init__(self, embed_dim=256, channels=(32, 32, 64), freq_patch=8, use_temporal_encoder=True,
                 n_chunks=4, temporal_layers=2, temporal_heads=8, use_modality_classifier=True,
                 grl_lambda=1.0, n_events=2, doa_head="attention", doa_time_steps=8, doa_iv_skip=True,
                 text_layers=1, dropout=0.1, audio=None, text=None, sample_rate=16000,
                 event_slots=False):
        """audio, text: the model.audio / model.text tower sections (null
        pretrained: the conv branches and the bundled MiniLM, frozen by
        default); sample_rate: the rate of batch["wave"] (data.sample_rate);
        event_slots: slot-structured embeddings (models/sclap/slots.py)."""
        super().__init__()
        towers = build_audio_branches(audio, channels, freq_patch, sample_rate)
        if towers is None:
            towers = ConvBranch(1, channels, freq_patch), ConvBranch(7, channels, freq_patch)
        self.sed_branch, self.doa_branch = towers
        C, C_doa = branch_width(self.sed_branch), branch_width(self.doa_branch)
        self.sed_proj = nn.Linear(C, embed_dim)
        self.doa_proj = nn.Linear(C_doa, embed_dim)
        self.w = nn.Parameter(torch.ones(embed_dim))  # joint = sed + w * doa
        self.temporal = None
        if use_temporal_encoder:
            self.temporal = TemporalAudioEncoder(C + C_doa, embed_dim, n_chunks, temporal_layers,
                                                 temporal_heads, dropout)
            self.final_audio_projection = nn.Linear(2 * embed_dim, embed_dim)
        self.doa_dir_proj = None
        if doa_head == "attention":
            self.doa_head = AttentionDOAHead(C_doa, n_events)
            # The DOA embedding also sees the head's estimate (slot 0 = the earlier event):
            # the attention head reads directions from the intensity vectors, so the
            # branch's map is no longer forced to carry them on its own.
            self.doa_dir_proj = nn.Linear(3 * n_events, embed_dim)
        elif doa_head == "mlp":
            self.doa_head = DOAHead(C_doa, n_events, doa_time_steps, iv_skip=doa_iv_skip)
        else:
            raise ValueError(f"model.doa_head must be 'attention' or 'mlp', got {doa_head!r}")
        text = {"freeze": True, **(text or {})}
        if text_layers > 0:
            # the text head reads the token features only: a checkpoint's pooler
            # (CLAP's RoBERTa) would get no gradient, which DDP refuses
            text.setdefault("pooling_strategy", "mean")
        self.text_encoder = build_text_encoder(text, "model.text", embed_dim)
        self.text_head = TextHead(embed_dim, text_layers, dropout=dropout) if text_layers > 0 else None
        self.event_slots = bool(event_slots)
        # the classifier sees the triplet embeddings: 3 * embed_dim when slot-structured
        self.modality_classifier = (ModalityClassifier(embed_dim * (3 if self.event_slots else 1), grl_lambda)
                                    if use_modality_classifier else None)
        if self.event_slots:   # built last: without them every other weight draws what it drew before
            if self.temporal is None:
                raise ValueError("model.event_slots reads the temporal encoder's chunk tokens: it "
                                 "needs model.use_temporal_encoder true")
            self.audio_slots = AudioSlots(embed_dim, n_chunks)
            self.text_slots = TextSlots(embed_dim)

    @property
    def needs_wave(self):
        """The semantic branch is a pretrained tower: batches carry the W waveform."""
        return is_tower(self.sed_branch)

    def set_grad_checkpointing(self, enable=True):
        self.text_encoder.set_grad_checkpointing(enable)
        for branch in (self.sed_branch, self.doa_branch):
            if is_tower(branch):
                branch.set_grad_checkpointing(enable)

    def encode_audio(self, feats, wave=None):
        """feats [N, 7, T, M] (and, with a pretrained tower, wave [N, n], the W
        channel) -> dict of audio [N, D], sed [N, D], doa [N, n_events, 3]."""
        if self.needs_wave:
            if wave is None:
                raise ValueError("model.audio.pretrained is set: the semantic branch takes the W "
                                 "waveform (batch['wave'] [B, 3, n]; the dataset gives it with "
                                 "wave_rate set)")
            sed_map, sed = branch_map(self.sed_branch, wave)                  # [N, C, T', 1]
        else:
            sed_map, sed = branch_map(self.sed_branch, feats[:, :1])          # [N, C, T', M']
        doa_in = spatial_input(self.doa_branch, feats) if is_tower(self.doa_branch) else feats
        doa_map, doa = branch_map(self.doa_branch, doa_in)
        sed = self.sed_proj(sed_map.mean(dim=(2, 3)) if sed is None else sed)
        doa_dir = self.doa_head(doa_map, feats)                 # [N, n_events, 3]
        doa = self.doa_proj(doa_map.mean(dim=(2, 3)) if doa is None else doa)
        if self.doa_dir_proj is not None:
            doa = doa + self.doa_dir_proj(F.normalize(doa_dir, dim=-1).flatten(1))
        joint = sed + self.w * doa
        audio = joint
        if self.temporal is not None:
            if self.needs_wave:
                # the semantic tower's frames that hold the clip (not its padding or
                # repeats), and the part of the clip they hold (the spatial map spans it all)
                in_tower, of_clip = clip_span(self.sed_branch, wave.shape[1] / self.sed_branch.sample_rate)
                sed_map, doa_map = leading(sed_map, in_tower), leading(doa_map, of_clip)
            if sed_map.shape[2:] != doa_map.shape[2:]:   # a tower's [N, C, T', 1] and a conv branch's map
                doa_map = align_time(doa_map, sed_map.shape[2])
            temporal, chunks = self.temporal(torch.cat([sed_map, doa_map], dim=1), return_tokens=True)
            audio = self.final_audio_projection(torch.cat([joint, temporal], dim=-1))
            if self.event_slots:
                slots = self.audio_slots(chunks)                                # [N, 2, D]
                return {"audio": slot_structured(audio, slots), "audio_slots": slots, "sed": sed,
                        "joint": joint, "doa": doa_dir}
        return {"audio": audio, "sed": sed, "joint": joint, "doa": doa_dir}

    def encode_text(self, captions):
        """[N, D], or [N, 3D] slot-structured with event_slots."""
        if self.event_slots:
            main, slots = self.text_parts(captions)
            return slot_structured(main, slots)
        out = self.text_encoder(captions)
        if self.text_head is None:
            return out.features
        return self.text_head(out.tokens, out.mask)            # [N, D]

    def text_parts(self, captions, slots=True):
        """(main text embedding [N, D], text slots [N, 2, D] or None)."""
        out = self.text_encoder(captions)
        if self.text_head is None:
            main, tokens = out.features, out.tokens
        else:
            main, tokens = self.text_head(out.tokens, out.mask, return_tokens=True)
        return main, (self.text_slots(tokens, out.mask) if slots and self.event_slots else None)

    def encode_event_captions(self, captions):
        """Main text embeddings [N, D] of single-event captions, each distinct
        one encoded once (neg_t's two event captions are pos's, swapped)."""
        where = {}
        index = [where.setdefault(c, len(where)) for c in captions]
        main, _ = self.text_parts(list(where), slots=False)
        return main[torch.tensor(index, device=main.device)]

    def modality_logits(self, emb):
        return self.modality_classifier(F.normalize(emb, dim=-1))

    def forward(self, batch):
        B = batch["feats"].shape[0]
        wave = batch["wave"].flatten(0, 1) if "wave" in batch else None   # [3B, n]
        a = self.encode_audio(batch["feats"].flatten(0, 1), wave)          # 3B clips, item-major
        out = {k: v.view(B, 3, *v.shape[1:]) for k, v in a.items()}
        if self.event_slots:
            main, slots = self.text_parts(batch["captions"])
            out["text"] = slot_structured(main, slots).view(B, 3, -1)           # [B, 3, 3D]
            out["text_slots"] = slots.view(B, 3, *slots.shape[1:])               # [B, 3, 2, D]
            out["plain"] = self.text_parts(batch["plain_captions"], slots=False)[0].view(B, 3, -1)
            if "event_captions" in batch:
                ev = self.encode_event_captions(batch["event_captions"])         # [6B, D]
                out["event"] = ev.view(B, 3, 2, -1)
        else:
            out["text"] = self.encode_text(batch["captions"]).view(B, 3, -1)
            out["plain"] = self.encode_text(batch["plain_captions"]).view(B, 3, -1)
        if self.modality_classifier is not None:
            out["mod_audio"] = self.modality_logits(out["audio"])   # [B, 3]
            out["mod_text"] = self.modality_logits(out["text"])     # [B, 3]
        return out


def build_sclap(mcfg, sample_rate=16000):
    return SCLAP(**mcfg, sample_rate=sample_rate)
