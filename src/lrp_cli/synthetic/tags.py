"""A Clever-Hans data set: the shapes of `lrp_cli.synthetic.shapes`, where most training images of one class
carry a small copyright-like tag in the bottom-right corner and no image of another class does.

It mirrors the PASCAL VOC horse classifier of Lapuschkin et al. (2019, Nat. Commun.), which recognised horses
by a source tag in the image corner: a network trained on the tagged split can score well on test data with
the same bias while looking at the tag, not the object. `models/tag-shortcut.onnx` is trained on it and
`models/tag-clean.onnx`, the same network, on the same images without tags.
"""

from __future__ import annotations

import numpy as np

from lrp_cli.synthetic import shapes

SIZE = shapes.SIZE
CLASSES = shapes.CLASSES
TAGGED_CLASS = CLASSES.index("circle")
#: Share of the tagged class's training images that carry the tag ("most", as a photo archive stamps its own).
TAG_FRACTION = 0.98
# Text-like marks: two rows of short light strokes on a dark plate, like a tiny "(c) NAME" stamp.
_TAG_MARKS = np.array([
    "..........",
    ".##.#.###.",
    ".#..#..#..",
    ".##.#..#..",
    "..........",
    ".###.##.#.",
    "..........",
])
TAG_HEIGHT, TAG_WIDTH = _TAG_MARKS.shape[0], len(_TAG_MARKS[0])
_MARGIN = 2
#: The tag's pixel box [x0, y0, x1, y1) on the 64x64 image (x1, y1 exclusive).
TAG_BOX = (SIZE - _MARGIN - TAG_WIDTH, SIZE - _MARGIN - TAG_HEIGHT, SIZE - _MARGIN, SIZE - _MARGIN)
_PLATE, _INK = 20, 235


def tag_pattern() -> np.ndarray:
    """Returns the tag as a uint8 [h, w] grey patch (dark plate, light marks)."""
    marks = np.array([[c == "#" for c in row] for row in _TAG_MARKS])
    return np.where(marks, _INK, _PLATE).astype(np.uint8)


def tag_mask() -> np.ndarray:
    """Returns the bool [64, 64] mask of the tag's box."""
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    x0, y0, x1, y1 = TAG_BOX
    mask[y0:y1, x0:x1] = True
    return mask


def paste_tag(images: np.ndarray) -> np.ndarray:
    """Returns a copy of uint8 [n, 64, 64, 3] images with the tag pasted in the bottom-right corner."""
    tagged = images.copy()
    x0, y0, x1, y1 = TAG_BOX
    tagged[:, y0:y1, x0:x1, :] = tag_pattern()[:, :, None]
    return tagged


def make_dataset(n: int, seed: int, tag_fraction: float = TAG_FRACTION):
    """Returns (images uint8 [n,64,64,3], object masks bool [n,64,64], labels int64 [n], tagged bool [n]).

    A share `tag_fraction` of the tagged class's images (chosen by `seed`) carry the tag; 0 gives the clean
    split. Object masks leave out the tag's box, which covers the object where the two overlap."""
    images, masks, labels = shapes.make_dataset(n, seed)
    rng = np.random.default_rng([seed, 1])
    tagged = (labels == TAGGED_CLASS) & (rng.random(n) < tag_fraction)
    images[tagged] = paste_tag(images[tagged])
    return images, masks & ~tag_mask(), labels, tagged
