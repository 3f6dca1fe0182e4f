"""Tiny pretrained-tower folders for the family tests (issue 11): random
weights, written by save_pretrained as a user's download would be.

``save_tiny_clip`` writes a full two-tower CLIP folder (model_type clip, as
openai/clip-vit-base-patch16 saved with CLIPModel + CLIPProcessor) with a
real CLIP byte-level BPE fast tokenizer over a small vocabulary (every byte
as a word piece and as a word end, a few merges), so the text tower's
character offsets are the ones CLIP's tokenizer gives.
"""
import os

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, ViTConfig, ViTModel
from transformers.convert_slow_tokenizer import bytes_to_unicode

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              image_size=32, patch_size=8, initializer_range=0.3)   # large init: outputs react
MERGES = ["t h", "th e</w>", "a n", "an d</w>", "o n", "s t", "r e", "e d</w>"]
SPECIALS = ["<|startoftext|>", "<|endoftext|>"]


def write_clip_tokenizer(path):
    """CLIP's fast (tokenizers) tokenizer saved into ``path``; returns it."""
    os.makedirs(path, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    words = [m.replace(" ", "") for m in MERGES]
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + words + SPECIALS)}
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in MERGES])
    tok.save_pretrained(path)
    return tok


def save_tiny_clip(path, seed=0, image_size=32, max_positions=64):
    """A tiny CLIPModel (vision: 2 blocks, 8 px patches of ``image_size`` px
    images; text: 2 blocks) and its tokenizer in ``path``. Returns the model."""
    path = str(path)
    tok = write_clip_tokenizer(path)
    torch.manual_seed(seed)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                vocab_size=len(tok), max_position_embeddings=max_positions,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    model = CLIPModel(CLIPConfig(vision_config=dict(VISION, image_size=image_size),
                                 text_config=text, projection_dim=16)).eval()
    model.save_pretrained(path)
    return model


def save_tiny_vit(path, seed=0, image_size=32):
    torch.manual_seed(seed)
    model = ViTModel(ViTConfig(**dict(VISION, image_size=image_size))).eval()
    model.save_pretrained(str(path))
    return model
