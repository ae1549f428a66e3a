"""WSOL scores (Choe et al., CVPR 2020): boxes from every contour, IoU, MaxBoxAccV2 with oracle and
calibrated thresholds, GT-known/top-1 Loc and PxAP, checked against OpenCV, scikit-learn and
numbers worked out by hand."""
import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score

from ltpa.attention.metrics.wsol import (best_box_iou, box_accuracy_scores, box_iou, boxes_from_mask,
                                         pixel_average_precision, wsol_thresholds)


def _opencv_boxes(mask: np.ndarray) -> list[tuple[int, ...]]:
    """Every contour of the reference protocol: findContours(RETR_TREE) + boundingRect, as
    (x0, y0, x1, y1) pixel sets (x1 one past the last pixel)."""
    contours = cv2.findContours(mask.astype(np.uint8) * 255, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    return sorted((x, y, x + w, y + h) for x, y, w, h in (cv2.boundingRect(c) for c in contours))


def test_boxes_equal_opencv_contour_boxes_on_random_masks():
    rng = np.random.default_rng(0)
    holes = 0
    for trial in range(400):
        height, width = rng.integers(3, 24, size=2)
        mask = rng.random((height, width)) < rng.uniform(0.2, 0.8)
        if trial % 2:
            mask = ndimage.binary_closing(mask)  # fewer, larger blobs, many with holes
        ours = sorted(tuple(int(v) for v in box) for box in boxes_from_mask(mask))
        assert ours == _opencv_boxes(mask), trial
        holes += len(ours) > ndimage.label(mask, structure=np.ones((3, 3)))[1]
    assert holes > 20  # the hole contours were exercised


def test_a_ring_gives_its_outer_box_and_its_hole_grown_by_one_pixel():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:8, 1:9] = True
    mask[4:6, 3:6] = False  # hole: rows 4-5, columns 3-5
    assert boxes_from_mask(mask).tolist() == [[1, 2, 9, 8], [2, 3, 7, 7]]
    assert boxes_from_mask(mask, contours="largest").tolist() == [[1, 2, 9, 8]]
    assert boxes_from_mask(np.zeros((4, 4), dtype=bool)).shape == (0, 4)


def test_box_iou_by_hand():
    iou = box_iou(np.array([[0, 0, 4, 4], [2, 2, 6, 6]]), np.array([[2, 2, 6, 6], [10, 10, 10, 10]]))
    assert iou.tolist() == [[4 / 28, 0.0], [1.0, 0.0]]


def _two_images():
    """Image 0: a blob exactly on its box; image 1: a small bright object and a larger, dimmer
    distractor."""
    heat = torch.zeros(2, 20, 20, dtype=torch.float64)
    heat[0, 5:15, 5:15] = 0.5
    heat[1, 2:5, 2:5] = 1.0
    heat[1, 10:18, 10:18] = 0.6
    boxes = torch.tensor([[5.0, 5.0, 15.0, 15.0], [2.0, 2.0, 5.0, 5.0]])
    return heat, boxes


def test_every_contour_finds_the_object_that_the_largest_contour_alone_misses():
    heat, boxes = _two_images()
    grid = [0.3, 0.5, 0.9]
    all_ious = best_box_iou(heat, boxes, grid)
    assert all_ious.tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    largest = best_box_iou(heat, boxes, grid, contours="largest")
    # below 0.6 the distractor is the largest component, and the object's box is never drawn
    assert largest.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
    # several ground-truth boxes: the best match counts; zero-size boxes pad
    padded = torch.tensor([[[5.0, 5.0, 15.0, 15.0], [0, 0, 0, 0]], [[10.0, 10.0, 11.0, 11.0], [2.0, 2.0, 5.0, 5.0]]])
    assert best_box_iou(heat, padded, grid).tolist() == all_ious.tolist()
    assert best_box_iou(heat, padded[:, :1], grid)[1].tolist() == [1 / 64, 1 / 64, 0.0]


def test_maxboxacc_v2_oracle_and_calibrated_thresholds():
    grid = [0.1, 0.5, 0.9]
    # (N, T) IoUs: the scored images do best at 0.9, the calibration split at 0.5
    scored = np.array([[0.2, 0.4, 0.8], [0.2, 0.6, 0.75], [0.1, 0.35, 0.55]])
    calibration = np.array([[0.3, 0.9, 0.1], [0.2, 0.8, 0.2]])
    result = box_accuracy_scores(scored, grid, correct=torch.tensor([True, False, True]), calibration=calibration)
    per = result["box_accuracy"]
    assert per["0.3"] == {"oracle": 1.0, "oracle_threshold": 0.5, "calibrated": 1.0, "calibrated_threshold": 0.5}
    assert per["0.5"]["oracle"] == 1.0 and per["0.5"]["oracle_threshold"] == 0.9
    assert per["0.5"]["calibrated"] == pytest.approx(1 / 3) and per["0.5"]["calibrated_threshold"] == 0.5
    assert per["0.7"]["oracle"] == pytest.approx(2 / 3) and per["0.7"]["calibrated"] == 0.0
    assert result["maxboxacc_v2"] == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert result["boxacc_v2_calibrated"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert result["gt_known_oracle"] == 1.0 and result["gt_known_calibrated"] == pytest.approx(1 / 3)
    assert result["top1_loc_oracle"] == pytest.approx(2 / 3)  # image 1 is misclassified
    assert result["top1_loc_calibrated"] == 0.0  # only image 1 hits at 0.5, and it is misclassified
    assert "calibrated" not in box_accuracy_scores(scored, grid)["box_accuracy"]["0.5"]


def test_pixel_average_precision_equals_scikit_learn_on_grid_valued_maps():
    rng = np.random.default_rng(1)
    # values on the 0.01 grid (after min-max: each map holds 0 and 1), so the thresholds lose nothing
    heat = rng.integers(0, 101, size=(5, 9, 9)).astype(np.float64) / 100
    heat[:, 0, 0], heat[:, 0, 1] = 0.0, 1.0
    masks = torch.from_numpy(heat + 0.4 * rng.random(heat.shape) > 0.8)
    ours = pixel_average_precision(torch.from_numpy(heat), masks)
    reference = average_precision_score(masks.numpy().ravel(), heat.ravel())
    assert ours == pytest.approx(reference, rel=1e-9)
    assert 0.5 < ours < 1.0
    # a map equal to the mask is perfect; a reversed one is not
    assert pixel_average_precision(masks.double(), masks) == pytest.approx(1.0)
    assert pixel_average_precision(1 - masks.double(), masks) < 0.6


def test_thresholds_and_bad_inputs():
    assert wsol_thresholds(0.25) == [0.0, 0.25, 0.5, 0.75] and len(wsol_thresholds()) == 100
    with pytest.raises(ValueError, match="interval"):
        wsol_thresholds(0)
    with pytest.raises(ValueError, match="boxes"):
        best_box_iou(torch.rand(2, 8, 8), torch.zeros(3, 4), [0.5])
    with pytest.raises(ValueError, match="contours"):
        boxes_from_mask(np.ones((3, 3), dtype=bool), contours="outer")
    with pytest.raises(ValueError, match="masks"):
        pixel_average_precision(torch.rand(2, 8, 8), torch.ones(2, 8, 8))
