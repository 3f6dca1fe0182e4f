"""Radar CLIP models (seeds 000, 001).

  encoder.py              RadarEncoder: multi-view radar maps -> feature sequence
  sequence_similarity.py  SequenceSimilarity: radar sequences x text tokens
  clip_model.py           CLIPModel: radar tower (RadarEncoder, or models/towers' RadarTower)
                          + text tower, per-sample outputs; model.radar / model.text sections
"""
