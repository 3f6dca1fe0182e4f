"""The two views of a multivariate series in TimesCLIP (seed 003, BRIEF sec. 4):
the language branch reads each variate as a sequence of patch tokens, the
vision branch reads each variate as its own line chart."""
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from models.timesclip.render import render_variates
from models.towers import TextTower, VisionTower, check_scratch_tower, tower_config


def run_layers(layers, x, grad_checkpointing):
    """nn.TransformerEncoder layers in order, each checkpointed if asked."""
    for layer in layers:
        x = checkpoint(layer, x, use_reentrant=False) if grad_checkpointing else layer(x)
    return x


def n_patches(n_steps, patch_length, stride):
    """PatchTST count with end padding: M = floor((T - PL) / S) + 2."""
    return (n_steps - patch_length) // stride + 2


class PatchEmbedding(nn.Module):
    """[B, T, V] -> patch tokens [B, V, M, D]. The end is padded by repeating
    the last value ``stride`` times (PatchTST), so the last observation gets a
    patch of its own; a linear tokenizer replaces a text token embedding."""

    def __init__(self, patch_length=6, stride=3, d_model=128):
        super().__init__()
        self.patch_length, self.stride = patch_length, stride
        self.tokenizer = nn.Linear(patch_length, d_model)

    def forward(self, x):
        b, t, v = x.shape
        if t < self.patch_length:
            raise ValueError(f"PatchEmbedding: series of {t} steps is shorter than "
                             f"patch_length {self.patch_length}")
        s = x.transpose(1, 2)                                      # [B, V, T]
        s = torch.cat([s, s[..., -1:].expand(b, v, self.stride)], -1)
        patches = s.unfold(-1, self.patch_length, self.stride)     # [B, V, M, PL]
        return self.tokenizer(patches)                             # [B, V, M, D]


class LanguageEncoder(nn.Module):
    """Patch tokens of each variate + CLS + learnable positions + a variate
    embedding -> a transformer body. ``language``: the model.language tower
    section; pretrained null = nn.Transformer layers from scratch, else a text
    model folder (CLIP: its text transformer, every token seeing every other;
    ``all-MiniLM-L6-v2``: the bundled MiniLM) fed through its embeddings
    input: the new linear tokenizer stands in for its token embedding.
    Returns tokens [B, V, 1 + M, D]; index 0 is the variate's CLS."""

    def __init__(self, n_variates, max_patches, patch_length=6, stride=3, d_model=128,
                 n_layers=2, n_heads=4, dropout=0.1, language=None):
        super().__init__()
        self.patch = PatchEmbedding(patch_length, stride, d_model)
        self.cls = nn.Parameter(torch.randn(d_model) * 0.02)
        self.pos = nn.Parameter(torch.randn(max_patches + 1, d_model) * 0.02)
        self.variate = nn.Embedding(n_variates, d_model)
        settings = tower_config(language, "model.language")
        self.pretrained = settings["pretrained"] is not None
        self.grad_checkpointing = False
        if not self.pretrained:
            check_scratch_tower(settings, "model.language")
            layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout,
                                               batch_first=True, norm_first=True, activation="gelu")
            self.body = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
            if settings["freeze"]:
                self.body.requires_grad_(False)
            self.to_body = nn.Identity()
        else:
            # the tower's own projection (hidden -> d_model) maps back from the body
            self.body = TextTower(settings, "model.language", embed_dim=d_model)
            # the token embedding is never read (the patch tokenizer replaces it):
            # it does not train, so DDP finds no parameter without a gradient
            self.body.backbone.get_input_embeddings().requires_grad_(False)
            self.to_body = nn.Linear(d_model, self.body.hidden_size)
        self.norm = nn.LayerNorm(d_model)

    def train(self, mode=True):
        super().train(mode)
        if not self.pretrained and not any(p.requires_grad for p in self.body.parameters()):
            self.body.eval()
        return self

    def set_grad_checkpointing(self, enable=True):
        if self.pretrained:
            self.body.set_grad_checkpointing(enable)
        else:
            self.grad_checkpointing = enable

    def forward(self, x):
        b, t, v = x.shape
        tok = self.patch(x)                                        # [B, V, M, D]
        m, d = tok.shape[2], tok.shape[3]
        if m + 1 > self.pos.shape[0]:
            raise ValueError(f"LanguageEncoder: {m} patches exceed max_patches {self.pos.shape[0] - 1}")
        cls = self.cls.expand(b, v, 1, d)
        tok = torch.cat([cls, tok], 2) + self.pos[: m + 1]         # [B, V, 1+M, D]
        tok = tok + self.variate.weight[:v].view(1, v, 1, d)
        seq = tok.reshape(b * v, m + 1, d)
        if self.pretrained:
            hidden = self.body.encode_embeds(self.to_body(seq), causal=False)   # [BV, 1+M, H]
            seq = self.body.proj(hidden)                                        # [BV, 1+M, D]
        elif self.grad_checkpointing and self.training:
            seq = run_layers(self.body.layers, seq, True)
        else:
            seq = self.body(seq)
        return self.norm(seq).view(b, v, m + 1, d)


class ViT(nn.Module):
    """A small ViT from scratch for chart images: [N, 3, S, S] -> [N, D]."""

    def __init__(self, image_size=64, patch_size=8, width=128, n_layers=2, n_heads=4, dropout=0.0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"ViT: image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.conv = nn.Conv2d(3, width, patch_size, patch_size)
        n = (image_size // patch_size) ** 2
        self.cls = nn.Parameter(torch.randn(width) * 0.02)
        self.pos = nn.Parameter(torch.randn(n + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, n_heads, 4 * width, dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.body = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.width, self.grad_checkpointing = width, False

    def forward(self, img):
        tok = self.conv(img * 2 - 1).flatten(2).transpose(1, 2)   # [N, P, W]
        tok = torch.cat([self.cls.expand(len(tok), 1, -1), tok], 1) + self.pos
        if self.grad_checkpointing and self.training:
            return self.norm(run_layers(self.body.layers, tok, True)[:, 0])
        return self.norm(self.body(tok)[:, 0])                     # [N, W]


class VisionEncoder(nn.Module):
    """Each variate drawn as its own chart (torch rasteriser, in the batch's
    device) and encoded: [B, T, V] -> [B, V, D]. ``vision``: the model.vision
    tower section; pretrained null = a small ViT from scratch, else a
    CLIPVisionModel / ViTModel folder at its native resolution (the paper: a
    frozen CLIP ViT-B/16 at 224 px; ``image_size`` must be that).

    A frozen body (``vision.freeze``, no block unfrozen) has its features
    cached by the series' content (the same window always draws the same
    chart). The keys are host-side names of each sample's series (``keys``,
    the collate's ``key``): a lookup reads nothing back from the device, and
    the features sit in a table on the features' device, gathered by row.
    Without ``keys`` the content is read back to the host to name it (a sync)."""

    def __init__(self, d_model=128, image_size=64, line_width=1.5, patch_size=8, width=128,
                 n_layers=2, n_heads=4, vision=None, cache_size=200000):
        super().__init__()
        self.image_size, self.line_width = image_size, line_width
        settings = tower_config(vision, "model.vision")
        self.pretrained = settings["pretrained"] is not None
        if not self.pretrained:
            check_scratch_tower(settings, "model.vision")
            self.body = ViT(image_size, patch_size, width, n_layers, n_heads)
            out = width
            if settings["freeze"]:
                self.body.requires_grad_(False)
            self.freeze = settings["freeze"]
        else:
            self.body = VisionTower(settings, "model.vision")
            out = self.body.hidden_size
            if self.body.image_size != (image_size, image_size):
                raise ValueError(f"model.vision.pretrained {settings['pretrained']!r} is trained on "
                                 f"{self.body.image_size[0]}x{self.body.image_size[1]} px images; "
                                 f"model.image_size is {image_size}: pass --model.image_size "
                                 f"{self.body.image_size[0]}")
            self.freeze = self.body.frozen
        self.proj = nn.Linear(out, d_model)
        # Frozen-feature cache: key -> row of self.table [rows, V, F], at most
        # cache_size charts. Neither is state: it is rebuilt from the weights,
        # and cleared when they load.
        self.cache_size, self.index, self.table = cache_size, {}, None
        self.register_load_state_dict_pre_hook(lambda module, *args: module.clear_cache())
        self._buf = None

    def set_grad_checkpointing(self, enable=True):
        if self.pretrained:
            self.body.set_grad_checkpointing(enable)
        else:
            self.body.grad_checkpointing = enable

    def clear_cache(self):
        self.index, self.table = {}, None

    def _encode(self, img):
        """Charts [N, 3, S, S] in [0, 1] -> [N, F]."""
        if not self.pretrained:
            return self.body(img)
        return self.body(img).features   # the tower normalises with its checkpoint's statistics

    def render(self, x):
        # One reused canvas buffer (no page faults per batch). Safe under
        # autograd: both backbones first map the pixels to a new tensor, so
        # nothing saved for backward aliases the buffer.
        self._buf = render_variates(x.detach().float(), self.image_size, self.line_width, out=self._buf)
        return self._buf                                            # [B, V, 3, S, S]

    def forward(self, x, keys=None):
        b, t, v = x.shape
        if not self.freeze:
            img = self.render(x).reshape(b * v, 3, self.image_size, self.image_size)
            return self.proj(self._encode(img)).view(b, v, -1)     # [B, V, D]
        if keys is None:
            keys = [row.numpy().tobytes() for row in x.detach().float().cpu()]
        if len(keys) != b:
            raise ValueError(f"VisionEncoder: {len(keys)} keys for a batch of {b} series")
        return self.proj(self._cached_features(x, keys))           # [B, V, D]

    @torch.no_grad()
    def _cached_features(self, x, keys):
        self.body.eval()
        b, t, v = x.shape
        if self.table is not None and self.table.device != x.device:
            self.table = self.table.to(x.device)                    # the model was moved
        rows = [self.index.get(k) for k in keys]                   # host ints or None
        new = {}                                                    # key -> first batch row
        for i, (k, r) in enumerate(zip(keys, rows)):
            if r is None:
                new.setdefault(k, i)
        if not new:
            return self.table[_on(rows, x.device)]                  # [B, V, F]
        fresh = self.render(x[_on(list(new.values()), x.device)])   # [n, V, 3, S, S]
        fresh = self._encode(fresh.reshape(-1, 3, self.image_size, self.image_size))
        fresh = fresh.float().view(len(new), v, -1)                 # [n, V, F]
        slot = {k: j for j, k in enumerate(new)}
        out = fresh.new_empty((b,) + fresh.shape[1:])
        hit = [i for i, r in enumerate(rows) if r is not None]
        miss = [i for i, r in enumerate(rows) if r is None]
        if hit:
            out[_on(hit, x.device)] = self.table[_on([rows[i] for i in hit], x.device)]
        out[_on(miss, x.device)] = fresh[_on([slot[keys[i]] for i in miss], x.device)]
        self._store(list(new), fresh)
        return out

    def _store(self, keys, feats):
        """Append rows for ``keys`` (features [n, V, F]) while there is room
        (``cache_size`` charts: V per row)."""
        max_rows = self.cache_size // feats.shape[1]
        used = len(self.index)
        n = min(len(keys), max_rows - used)
        if n <= 0:
            return
        if self.table is None:
            self.table = feats.new_empty((min(max_rows, max(1024, n)),) + feats.shape[1:])
        elif used + n > len(self.table):   # grow by doubling, up to max_rows
            grown = feats.new_empty((min(max_rows, max(2 * len(self.table), used + n)),)
                                    + feats.shape[1:])
            grown[:used] = self.table[:used]
            self.table = grown
        self.table[used:used + n] = feats[:n]
        self.index.update((k, used + j) for j, k in enumerate(keys[:n]))


def _on(indices, device):
    """A host list of row indices as a LongTensor on ``device``, copied
    without waiting for the device (pinned memory on CUDA)."""
    t = torch.tensor(indices, dtype=torch.long)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
