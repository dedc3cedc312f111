"""Historian archive compression, as PI and IP.21 apply it before data reach an export.

Swinging-door compression keeps a point only when a straight line from the last archived
point can no longer pass within `dev` of every point since; `max_interval` forces an
archive value at least that often (PI's CompMax). The result is irregular data with flat
stretches, which is what every reader and resampler downstream must handle.
"""

from __future__ import annotations

import numpy as np


def swinging_door(t: np.ndarray, v: np.ndarray, dev: float, max_interval: float) -> np.ndarray:
    """Indices of the points a swinging-door archive keeps (always the first and last)."""
    n = len(t)
    if n <= 2:
        return np.arange(n)
    ts = t.tolist()
    vs = v.tolist()
    keep = [0]
    t0, v0 = ts[0], vs[0]
    slope_hi, slope_lo = float("inf"), float("-inf")
    for i in range(1, n):
        dt = ts[i] - t0
        hi = (vs[i] + dev - v0) / dt
        lo = (vs[i] - dev - v0) / dt
        if hi < slope_hi:
            slope_hi = hi
        if lo > slope_lo:
            slope_lo = lo
        if slope_lo > slope_hi or dt > max_interval:
            # the door closed: archive the previous point and restart from it
            j = i - 1 if i - 1 > keep[-1] else i
            keep.append(j)
            t0, v0 = ts[j], vs[j]
            if j == i:
                slope_hi, slope_lo = float("inf"), float("-inf")
            else:
                dt = ts[i] - t0
                slope_hi = (vs[i] + dev - v0) / dt
                slope_lo = (vs[i] - dev - v0) / dt
    if keep[-1] != n - 1:
        keep.append(n - 1)
    return np.asarray(keep, dtype=np.int64)


def deadband(t: np.ndarray, v: np.ndarray, dev: float, max_interval: float) -> np.ndarray:
    """Indices an exception-reporting interface passes on (PI's ExcDev / ExcMax); first and last
    are always kept.

    A value is sent when it differs from the last sent value by more than `dev`, or when
    `max_interval` has passed since the last one; with it goes the value just before it (if not
    sent already), as PI does, so a step reaches the archive as a step rather than a ramp. The
    archive's swinging door then works on these points only.
    """
    n = len(t)
    if n <= 2:
        return np.arange(n)
    ts = t.tolist()
    vs = v.tolist()
    keep = [0]
    t0, v0 = ts[0], vs[0]
    for i in range(1, n):
        if abs(vs[i] - v0) > dev or ts[i] - t0 >= max_interval:
            if i - 1 > keep[-1]:
                keep.append(i - 1)
            keep.append(i)
            t0, v0 = ts[i], vs[i]
    if keep[-1] != n - 1:
        keep.append(n - 1)
    return np.asarray(keep, dtype=np.int64)
