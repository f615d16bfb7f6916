"""The context task with a key smaller than one pyramid cell, among look-alike decoys: what ESA loses.

The image is drawn as in :mod:`esa_tutorial.book.context_task` (three discs, the
label is the disc whose colour matches the key), with two changes:

* the key is :data:`FINE_KEY_SIZE` x :data:`FINE_KEY_SIZE` pixels of colour in
  a :data:`FINE_FRAME`-pixel white frame: one feature pixel of
  :class:`~esa_tutorial.book.context_task.ContextNet`'s half-resolution map,
  where a 5x5 pyramid cell covers about 40;
* the background is strewn with decoys on a jittered lattice: unframed dots
  of the discs' colours and empty white frames. Every part of the key appears
  all over the image; only the *combination* "this colour inside a frame", at
  one pixel, marks the key.

Why this separates the two attentions: full attention (MHSA) scores each
pixel on its own, so a score that merely *adds* "has my colour" and "has a
frame" already puts the most weight on the one pixel that has both (the
softmax turns the sum into a soft AND). ESA scores the 35 cell averages of
the same features; a cell with a dot of the colour and an empty frame beside
it has the same averages as a cell with the framed key, so ESA can only
succeed if the convolutions before it build a dedicated "framed colour"
feature, one pixel out of about 40 in the average.

Images are (3, size, size) float32 in [0, 1], masks (1, size, size) in {0, 1};
sample ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import numpy as np

from .context_task import PALETTE, ContextDiscs, ContextSample, context_sample

FINE_KEY_SIZE = 2  # inner side of a key, pixels: one pixel of ContextNet's half-resolution map
FINE_FRAME = 1
N_KEYS = 3  # framed dots of the target's colour: the corner one and two on the lattice
DECOY_STEP = 6  # lattice spacing of keys and decoys, pixels
DECOY_SIDE = FINE_KEY_SIZE + 2 * FINE_FRAME  # an empty frame has a key's outer size
KEY_CLEARANCE = 7  # lattice keys stay this far from every disc: beyond the convolutions' half-window


def fine_key_sample(seed: int, index: int, size: int = 64) -> ContextSample:
    """Sample ``index`` of the fine-key task, determined by ``(seed, index)`` alone.

    The discs, their colours, the target and the corner key are drawn as by
    :func:`~esa_tutorial.book.context_task.context_sample` with a 2x2 key; the
    lattice of keys and decoys comes from a generator of its own.

    On the lattice: ``N_KEYS - 1`` more keys, unframed dots and empty frames,
    counted so that every disc colour appears on the same number of dots
    (framed or not) and the number of frames is fixed: the counts of colours
    and of frames are the same whichever disc is the target.
    """
    base = context_sample(seed, index, size, key_size=FINE_KEY_SIZE, frame=FINE_FRAME)
    image = base.image.copy()
    rng = np.random.default_rng([seed, index, 8])
    yy, xx = np.mgrid[0:size, 0:size]
    near_disc = np.full((size, size), np.inf)
    for (cy, cx), r in zip(base.centres, base.radii):
        near_disc = np.minimum(near_disc, np.hypot(yy - cy, xx - cx) - r)
    # Decoys keep 2 pixels from discs and from the corner key; keys keep KEY_CLEARANCE from discs.
    taken = near_disc <= 2
    top, left, bottom, right = base.key_box
    taken[max(0, top - 2) : bottom + 2, max(0, left - 2) : right + 2] = True
    slots, far = [], []
    for row in range(1, size - DECOY_SIDE, DECOY_STEP):
        for col in range(1, size - DECOY_SIDE, DECOY_STEP):
            t, l = row + int(rng.integers(0, 2)), col + int(rng.integers(0, 2))
            box = (slice(max(0, t - 1), t + DECOY_SIDE + 1), slice(max(0, l - 1), l + DECOY_SIDE + 1))
            if not taken[box].any():
                slots.append((t, l))
                far.append(near_disc[box].min() >= KEY_CLEARANCE)
    order = rng.permutation(len(slots))
    key_slots = [i for i in order if far[i]][: N_KEYS - 1]
    rest = [i for i in order if i not in key_slots]
    keys = len(key_slots) + 1  # with the corner key
    # Per colour `per_colour` dots in all (keys included), and as many frames (keys included).
    per_colour = (len(rest) + 2 * keys) // 4
    items = [("frame", None)] * (per_colour - keys)
    for colour in base.colours:
        own = per_colour - (keys if colour == base.colours[base.target] else 0)
        items += [("dot", colour)] * own
    items += [("key", base.colours[base.target])] * len(key_slots)
    kinds = [items[i] for i in rng.permutation(len(items))]
    placed = key_slots + rest[: len(items) - len(key_slots)]
    # Keys first in `placed`, so give them the key items; the rest get the shuffled decoys.
    decoys = [k for k in kinds if k[0] != "key"]
    for n, slot in enumerate(placed):
        kind, colour = ("key", base.colours[base.target]) if n < len(key_slots) else decoys[n - len(key_slots)]
        t, l = slots[slot]
        inner = (slice(t + FINE_FRAME, t + FINE_FRAME + FINE_KEY_SIZE), slice(l + FINE_FRAME, l + FINE_FRAME + FINE_KEY_SIZE))
        if kind in ("frame", "key"):
            background = image[inner].copy()
            image[t : t + DECOY_SIDE, l : l + DECOY_SIDE] = 1.0
            image[inner] = background
        if kind in ("dot", "key"):
            image[inner] = PALETTE[colour] + rng.uniform(-0.06, 0.06, size=3).astype(np.float32)
    return ContextSample(
        np.clip(image, 0, 1), base.mask, base.key_box, base.centres, base.radii, base.colours, base.target
    )


class FineKeyDiscs(ContextDiscs):
    """``n`` samples of the fine-key task: ``ds[i]`` = (image (3, S, S), mask (1, S, S)) float32."""

    _draw = staticmethod(fine_key_sample)
