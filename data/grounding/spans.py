"""Character spans of phrases: to tokens, and through caption rewrites."""
import re

import torch

from data.grounding.format import Caption, Phrase

_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left"}
_LR = re.compile(r"\b(left|right|Left|Right)\b")


def spans_to_token_mask(offsets, spans, valid):
    """Which tokens each phrase covers.

    offsets [B, L, 2] character offsets from the fast tokenizer ((0, 0) for
    special and padding tokens); spans [B, E, 2] phrase (start, end), end
    exclusive; valid [B, E] bool. A token belongs to a phrase if their
    character ranges overlap, so a boundary falling inside a word still takes
    that word's sub-token (MDETR's fallback to neighbouring characters).
    Returns [B, E, L] bool; a phrase truncated away has no tokens.
    """
    ts, te = offsets[..., 0].unsqueeze(1), offsets[..., 1].unsqueeze(1)     # [B, 1, L]
    s, e = spans[..., 0].unsqueeze(-1), spans[..., 1].unsqueeze(-1)         # [B, E, 1]
    real = (te > ts)                                                        # [B, 1, L]
    return real & (ts < e) & (te > s) & valid.unsqueeze(-1)


def swap_left_right(caption):
    """'left' <-> 'right' in a caption (for a horizontal flip), keeping the
    phrase spans right although the two words differ in length."""
    cuts = sorted({0, len(caption.text), *[p.start for p in caption.phrases],
                   *[p.end for p in caption.phrases]})
    new_pos, out, n = {}, [], 0
    for a, b in zip(cuts[:-1], cuts[1:]):
        new_pos[a] = n
        piece = _LR.sub(lambda m: _SWAP[m.group(0)], caption.text[a:b])
        out.append(piece)
        n += len(piece)
    new_pos[len(caption.text)] = n
    text = "".join(out)
    phrases = [Phrase(p.chain, p.types, text[new_pos[p.start]:new_pos[p.end]], new_pos[p.start],
                      new_pos[p.end]) for p in caption.phrases]
    return Caption(text, phrases)
