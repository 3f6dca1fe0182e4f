"""Radar CLIP models (seeds 000, 001).

  encoder.py              RadarEncoder: multi-view radar maps -> feature sequence
  sequence_similarity.py  SequenceSimilarity: radar sequences x text tokens
  clip_model.py           CLIPModel: RadarEncoder + TextEncoder, per-sample outputs
"""
