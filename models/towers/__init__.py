"""Pretrained towers for every modality (issue 11): loading from local
folders / the local HF cache, one config schema, and what trains."""
from models.towers.audio import AudioOutput, AudioTower
from models.towers.loading import (AUDIO_TYPES, TEXT_TYPES, TOWER_DEFAULTS, VISION_TYPES,
                                   check_scratch_tower, load_tower, resolve_pretrained,
                                   tower_config)
from models.towers.radar import RadarTower
from models.towers.text import TextTower, build_text_encoder
from models.towers.trainable import (Tower, find_towers, param_layer_ids, tower_lr_mults,
                                     tower_summary)
from models.towers.vision import (VisionOutput, VisionTower, fold_patch_embedding,
                                  interpolate_pos_embed)
