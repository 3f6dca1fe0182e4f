"""Classical, non-learned DOA baseline for two-event FOA clips: active
intensity vectors (DirAC-style), clustered into two directions.

For each STFT frame the intensity Re(W* . (X, Y, Z)) is summed over the
band f_lo..f_hi, then summed over blocks of `block` frames (the average that
makes intensity-vector DOA robust to noise and reverberation). The block
vectors are clustered by weighted spherical k-means (k = 2, weights = block
intensity magnitude). It is told nothing about when the events occur.
"""
import numpy as np
from scipy import signal

# Bump when an estimate changes: the evaluation caches the estimates on disk.
VERSION = 1


def block_intensity(foa, sr, n_fft=512, hop=256, block=6, f_lo=100.0, f_hi=7000.0):
    """FOA [4, n] (ACN W, Y, Z, X) -> block intensity vectors [n_blocks, 3] (x front, y left, z up)."""
    f, _, S = signal.stft(foa, fs=sr, nperseg=n_fft, noverlap=n_fft - hop)  # [4, K, frames]
    band = (f >= f_lo) & (f <= f_hi)
    w = S[0, band]
    iv = np.stack([(np.conj(w) * S[c, band]).real.sum(0) for c in (3, 1, 2)], axis=-1)  # [frames, 3]
    n = (len(iv) // block) * block
    return iv[:n].reshape(-1, block, 3).sum(1)


def spherical_kmeans2(vecs, iters=20):
    """Two weighted mean directions of vectors [N, 3] (weight = length). -> [2, 3] unit."""
    wts = np.linalg.norm(vecs, axis=1) + 1e-12
    u = vecs / wts[:, None]
    c0 = u[np.argmax(wts)]
    # second seed: the strongest vector far from the first
    far = (u @ c0) < 0.5
    c1 = u[np.argmax(np.where(far, wts, -1))] if far.any() else -c0
    c = np.stack([c0, c1])
    for _ in range(iters):
        assign = np.argmax(u @ c.T, axis=1)
        new = np.stack([(vecs[assign == k]).sum(0) if (assign == k).any() else c[k] for k in range(2)])
        c = new / (np.linalg.norm(new, axis=1, keepdims=True) + 1e-12)
    return c


def estimate_two_doas(foa, sr):
    """FOA [4, n] -> two unit DOA vectors [2, 3]."""
    return spherical_kmeans2(block_intensity(foa, sr))


def angular_error_deg(pred, target):
    """Permutation-invariant mean angle (deg) between pred and target event
    directions [N, 2, 3] -> [N]. pred need not be unit length."""
    p = pred / (np.linalg.norm(pred, axis=-1, keepdims=True) + 1e-12)
    t = target / np.linalg.norm(target, axis=-1, keepdims=True)

    def ang(a, b):
        return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1, 1))).mean(-1)
    return np.minimum(ang(p, t), ang(p, t[:, ::-1]))
