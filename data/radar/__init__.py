"""Radar data (seeds 000, 001): the mmExpert / HumanML3D on-disk format.

  motion.py    skeleton, pose curves, forward kinematics
  actions.py   the action vocabulary; a clip chains 1-3 actions
  text.py      HumanML3D-style captions and their order-swapped versions
  fmcw.py      FMCW radar maps (range, Doppler, azimuth x time)
  sim.py       the generator: writes the format under data.root
  layouts.py   the layouts a user's folder may hold (project, mmexpert), split lists
  dataset.py   the loader (generated or real data, either layout) and its collate
  temporal.py  order-swapped captions as hard negatives (TemporalNegatives)
  probe.py     a linear probe of the data (``python -m data.radar.probe``)
"""
