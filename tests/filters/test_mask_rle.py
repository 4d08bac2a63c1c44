"""Edit masks as data: COCO RLE (the convention pycocotools reads), bounding box and area fraction."""

from __future__ import annotations

import numpy as np
import pytest

from editgen.filters.pairs.masks import decode_mask, mask_bbox, mask_geometry, rle_decode, rle_encode
from editgen.tiny.synthetic import encode


def test_rle_matches_a_hand_written_coco_example_and_round_trips():
    # Column-major (down each column), runs starting with 0s: the layout pycocotools.mask.frPyObjects reads.
    #   0 1 0      column 0: 0 0 0 | column 1: 1 1 0 | column 2: 0 1 0
    #   0 1 1      -> 0 0 0 1 1 0 0 1 0 -> runs 3x0, 2x1, 2x0, 1x1, 1x0
    #   0 0 0
    mask = np.array([[0, 1, 0], [0, 1, 1], [0, 0, 0]], bool)
    assert rle_encode(mask) == {"size": [3, 3], "counts": [3, 2, 2, 1, 1]}
    assert rle_encode(np.ones((2, 3), bool)) == {"size": [2, 3], "counts": [0, 6]}  # starts in the mask: 0 first
    assert rle_encode(np.zeros((2, 3), bool)) == {"size": [2, 3], "counts": [6]}
    assert (rle_decode({"size": [2, 2], "counts": [1, 2, 1]}) == np.array([[0, 1], [1, 0]], bool)).all()
    rng = np.random.default_rng(0)
    for shape in ((1, 1), (5, 7), (16, 9), (0, 4)):
        for density in (0.0, 0.3, 1.0):
            m = rng.random(shape) < density
            rle = rle_encode(m)
            assert sum(rle["counts"]) == m.size and (rle_decode(rle) == m).all() and rle_decode(rle).shape == shape
    for bad in ({"size": [2, 2], "counts": [1, 2]}, {"size": [2, 2], "counts": [5, -1]}, {"counts": [4]}):
        with pytest.raises(ValueError, match="rle"):
            rle_decode(bad)


def test_bbox_and_area_of_constructed_masks():
    mask = np.zeros((10, 20), bool)
    mask[2:5, 3:11] = True  # rows 2..4, columns 3..10
    assert mask_bbox(mask) == [3, 2, 8, 3]
    mask[9, 19] = True
    g = mask_geometry(mask)
    assert g.bbox == [3, 2, 17, 8] and g.area == pytest.approx(25 / 200) and not g.whole_image
    assert mask_geometry(np.zeros((4, 4), bool)).bbox == [0, 0, 0, 0]
    whole = mask_geometry(np.ones((4, 6), bool))
    assert (whole.bbox, whole.area, whole.whole_image) == ([0, 0, 6, 4], 1.0, True)
    # From a PNG: grey >= 128 is in the mask (a feathered edge counts its inner half).
    grey = np.array([[0, 127, 128, 255]], np.uint8)
    assert decode_mask(encode(grey)).tolist() == [[False, False, True, True]]
    assert mask_geometry(encode(mask.astype(np.uint8) * 255)) == g
    with pytest.raises(ValueError, match="does not decode"):
        decode_mask(b"not a png")
