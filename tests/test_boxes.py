"""idruid.boxes: each rule that turns a box into pixels or tokens, against hand-worked values."""

import numpy as np
import pytest
import torch

from idruid.boxes import (
    box_iou,
    covering_cells,
    cxcywh_to_xyxy,
    mask_box,
    pair_iou,
    pairwise_iou,
    patch_geometry,
    patch_pixel_masks,
    pixel_masks,
    to_pixels,
    truncated_windows,
)

# ----------------------------------------------------------------------------- IoU, centre and covering rules


def test_box_iou_hand_made_cases():
    a = np.array([0.0, 0.0, 0.5, 0.5])
    assert box_iou(a, a) == pytest.approx(1.0)  # identical
    assert box_iou(a, [0.6, 0.6, 1.0, 1.0]) == 0.0  # disjoint
    assert box_iou(a, [0.5, 0.0, 1.0, 0.5]) == 0.0  # touching edges
    assert box_iou(a, [0.0, 0.0, 0.25, 0.25]) == pytest.approx(0.25)  # nested: inner / outer
    assert box_iou(a, [0.25, 0.0, 0.75, 0.5]) == pytest.approx(1 / 3)  # half overlap
    assert box_iou(a, [0.2, 0.2, 0.2, 0.2]) == 0.0  # degenerate box


def test_box_iou_broadcasts_and_pairwise_matches():
    a = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    b = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0], [0.9, 0.9, 1.0, 1.0]])
    matrix = pairwise_iou(a, b)
    assert matrix.shape == (2, 3)
    np.testing.assert_allclose(matrix, box_iou(a[:, None], b[None]))
    np.testing.assert_allclose(matrix, [[1.0, 0.25, 0.0], [0.0, 0.25, 0.04]])
    assert pairwise_iou(a, np.zeros((0, 4))).shape == (2, 0)


def test_pair_iou_equals_box_iou_exactly():
    """The shapes sampler's scalar IoU: the same float64 as box_iou, on integer grid boxes (what
    the sampler passes, ints divided exactly), on floats, and on touching, nested, inverted
    and empty boxes."""
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 32, size=(500, 2, 4))
    floats = rng.uniform(-0.2, 1.2, size=(500, 2, 4))
    special = [
        ([0, 0, 4, 4], [4, 0, 8, 4]),  # touching
        ([0, 0, 8, 8], [2, 2, 4, 4]),  # nested
        ([5, 5, 1, 1], [0, 0, 8, 8]),  # inverted: zero area
        ([3, 3, 3, 3], [3, 3, 3, 3]),  # empty union
    ]
    pairs = [*grid, *floats, *(np.array(pair) for pair in special)]
    for a, b in pairs:
        assert pair_iou(a.tolist(), b.tolist()) == float(box_iou(a, b))
    assert pair_iou([0, 0, 8, 8], [2, 2, 4, 4]) == 4 / 64 and pair_iou([3, 3, 3, 3], [3, 3, 3, 3]) == 0.0


def test_pixel_masks_use_pixel_centres():
    masks = pixel_masks(np.array([[0.0, 0.0, 0.5, 0.25], [0.5, 0.0, 1.0, 0.25]]), 4, 4)
    assert masks.shape == (2, 4, 4)
    assert masks[0].sum() == 2 and masks[0][0, :2].all()
    assert not (masks[0] & masks[1]).any()


def test_covering_cells_hand_worked():
    # 4x4 grid; box covering x in [0.25, 0.75), y in [0, 0.5): cells (rows 0-1, cols 1-2)
    mask = covering_cells(torch.tensor([[0.25, 0.0, 0.75, 0.5]]), 4, 4).view(4, 4)
    expected = torch.zeros(4, 4)
    expected[0:2, 1:3] = 1
    assert torch.equal(mask, expected)
    # a box smaller than a cell still marks the cell it sits in
    tiny = covering_cells(torch.tensor([[0.55, 0.55, 0.6, 0.6]]), 4, 4).view(4, 4)
    assert tiny.sum() == 1 and tiny[2, 2] == 1
    # a box touching a cell boundary does not spill into the next cell
    edge = covering_cells(torch.tensor([[0.0, 0.0, 0.5, 0.5]]), 4, 4).view(4, 4)
    assert edge.sum() == 4
    # padded zero boxes are empty
    assert covering_cells(torch.zeros(1, 4), 4, 4).sum() == 0


def test_covering_cells_match_a_naive_loop():
    torch.manual_seed(0)
    corners = torch.rand(20, 2, 2).sort(dim=1).values  # (20, [min,max], [x,y])
    boxes = torch.stack([corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0], corners[:, 1, 1]], dim=-1)
    h, w = 5, 7
    fast = covering_cells(boxes, h, w).view(20, h, w)
    for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        for i in range(h):
            for j in range(w):
                overlap = (j / w < x1) and ((j + 1) / w > x0) and (i / h < y1) and ((i + 1) / h > y0)
                assert fast[k, i, j].item() == float(overlap)


def test_patch_pixel_masks_hand_worked_and_coverage():
    # 8x8 image, patch 4 -> 2x2 cells; box x in [0.25, 0.75), y in [0, 0.5)
    masks = patch_pixel_masks(torch.tensor([[0.25, 0.0, 0.75, 0.5]]), 8, 8, 4)[0]  # (4 cells, 16)
    assert masks.shape == (4, 16)
    # top-left cell: columns 2-3 of its 4x4 pixels, all rows; top-right: columns 0-1
    expected_left = torch.tensor([[0, 0, 1, 1]] * 4, dtype=torch.float32).flatten()
    assert torch.equal(masks[0], expected_left) and torch.equal(
        masks[1], expected_left.view(4, 4).flip(1).flatten()
    )
    assert masks[2:].sum() == 0
    assert torch.allclose(masks.mean(-1), torch.tensor([0.5, 0.5, 0.0, 0.0]))
    # the pixel masks agree with the cell masks: a cell with any pixel inside overlaps the box
    torch.manual_seed(0)
    boxes = torch.rand(30, 2, 2).sort(dim=1).values.transpose(1, 2).reshape(30, 4)[:, [0, 2, 1, 3]]
    cells = covering_cells(boxes, 4, 4)
    pixel_any = patch_pixel_masks(boxes, 16, 16, 4).amax(-1)
    assert torch.all(pixel_any <= cells)


def test_patch_geometry_relative_coordinates():
    # 8x8 image, one 4x4 cell grid cell; box x in [0.25, 0.75): pixel centres 2.5/8 .. 5.5/8
    geo = patch_geometry(torch.tensor([[0.25, 0.0, 0.75, 1.0]]), 8, 8, 4)[0]  # (4, 16, 6)
    assert torch.equal(geo[..., 0], patch_pixel_masks(torch.tensor([[0.25, 0.0, 0.75, 1.0]]), 8, 8, 4)[0])
    u = geo[0, :4, 1]  # first pixel row of the top-left cell: columns 0..3
    assert torch.allclose(u, torch.tensor([0.0, 0.0, 0.125, 0.375]))  # (x - 0.25) / 0.5, zero outside
    v = geo[0, ::4, 2]  # first pixel column of the top-left cell: rows 0..3 (outside the box: zero)
    assert torch.all(v == 0)
    v_inside = geo[0, 2::4, 2]  # column 2 is inside: v = (y + 0.5) / 8
    assert torch.allclose(v_inside, (torch.arange(4) + 0.5) / 8)
    # the quadratic terms are products of the linear ones
    assert torch.allclose(geo[..., 3], geo[..., 1] ** 2) and torch.allclose(geo[..., 4], geo[..., 2] ** 2)
    assert torch.allclose(geo[..., 5], geo[..., 1] * geo[..., 2])


# ----------------------------------------------------------------------------- formats


def test_to_pixels_scales_without_rounding():
    # x by the width (50), y by the height (40); 0.33 * 50 = 16.5 stays 16.5
    np.testing.assert_allclose(to_pixels(np.array([0.33, 0.2, 0.5, 1.0]), 40, 50), [[16.5, 8.0, 25.0, 40.0]])


def test_cxcywh_to_xyxy_hand_worked_and_not_clipped():
    boxes = np.array([[0.5, 0.5, 0.2, 0.4], [0.05, 0.9, 0.2, 0.4]])
    # the second box leaves the image at the left and the bottom, and keeps its corners there
    np.testing.assert_allclose(cxcywh_to_xyxy(boxes), [[0.4, 0.3, 0.6, 0.7], [-0.05, 0.7, 0.15, 1.1]])
    float32 = cxcywh_to_xyxy(boxes.astype(np.float32))
    assert float32.dtype == np.float32
    assert float32[1, 0] == np.float32(0.05) - np.float32(0.2) / np.float32(2)  # in float32, as GroundingDINO


def test_mask_box_lies_on_pixel_edges():
    mask = np.zeros((4, 8), dtype=bool)
    mask[1:3, 2:5] = True  # rows 1-2, columns 2-4
    np.testing.assert_array_equal(mask_box(mask), np.array([2 / 8, 1 / 4, 5 / 8, 3 / 4], np.float32))
    assert mask_box(mask).dtype == np.float32
    # the centre rule gives the mask back from its box
    np.testing.assert_array_equal(pixel_masks(mask_box(mask), 4, 8)[0], mask)


# ----------------------------------------------------------------------------- centre rule


def test_truncated_windows_by_hand():
    """The LayoutSAM-eval script's crop: round(x, 3) as float32, times the side in float32,
    truncated; a window that holds no pixel is widened to the pixel where it starts."""
    boxes = np.array(
        [
            [0.0, 0.0, 0.5, 0.5],  # columns 0-3 of 8, rows 0-1 of 4
            [0.1249, 0.1, 0.62, 0.9],  # 0.1249 rounds to 0.125 -> column 1 (unrounded: 0); 4.96 -> 4
            [0.51, 0.26, 0.52, 0.27],  # 4.08 and 4.16 both truncate to 4: widened to column 4, row 1
            [0.99, 0.99, 1.0, 1.0],  # the bottom-right pixel
        ]
    )
    assert truncated_windows(boxes, 4, 8).tolist() == [[0, 2, 0, 4], [0, 3, 1, 4], [1, 2, 4, 5], [3, 4, 7, 8]]
    # float32, as the script's tensors: 0.21 * 300 is 62.999996 (62, float64 says 63) and
    # 0.41 * 300 is 123.00001 (123, float64 says 122.99999999999999, so 122)
    assert truncated_windows(np.array([[0.21, 0.41, 0.5, 0.6]]), 300, 300).tolist() == [[123, 180, 62, 150]]
    assert int(torch.tensor(0.21) * 300) == 62 and int(torch.tensor(0.41) * 300) == 123


def test_the_centre_and_covering_rules_differ_only_as_stated():
    """A box ending between pixel centres: the centre rule stops at the last centre inside, the
    covering rule takes every cell the box touches."""
    box = [0.3, 0.0, 0.55, 1.0]  # x from 1.2 to 2.2 cells of a 4-wide grid
    centre = pixel_masks(np.array(box), 1, 4)[0, 0]  # centres 0.125, 0.375, 0.625, 0.875
    covering = covering_cells(torch.tensor([box]), 1, 4)[0]
    assert centre.tolist() == [False, True, False, False]
    assert covering.tolist() == [0.0, 1.0, 1.0, 0.0]
    # on a grid the centre rule of patch_pixel_masks is pixel_masks, cell by cell
    boxes = torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.55, 0.0, 0.6, 0.3]], dtype=torch.float64)
    by_cell = patch_pixel_masks(boxes, 8, 8, 4)  # (2, 4 cells, 16)
    image = by_cell.view(2, 2, 2, 4, 4).permute(0, 1, 3, 2, 4).reshape(2, 8, 8)
    np.testing.assert_array_equal(image.numpy().astype(bool), pixel_masks(boxes.numpy(), 8, 8))


def test_shapes_squares_are_drawn_by_the_centre_rule():
    from idruid.data.shapes import ShapeSpec, shape_mask

    spec = ShapeSpec("red", "square", "solid", (0.25, 0.125, 0.5625, 0.5))
    np.testing.assert_array_equal(shape_mask(spec, 16), pixel_masks(np.array(spec.box), 16, 16)[0])


def test_patch_pixel_masks_refuse_a_size_off_the_patch_grid():
    with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
        patch_pixel_masks(torch.zeros(1, 4), 6, 8, 4)
