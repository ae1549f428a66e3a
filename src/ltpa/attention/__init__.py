"""Look at and measure attention: maps on the image grid, overlays, diagnostics, pointing games,
segmentation, WSOL box scores, parts, CAM baselines, faithfulness (deletion/insertion, ROAD),
sanity checks, one-call localisation reports, and TensorBoard overlays."""
from ltpa.attention.cam_baselines import CAM_METHODS, gap_cam_maps, grad_cam_maps
from ltpa.attention.diagnostics import diagnose, explain, map_statistics, summarise_maps
from ltpa.attention.faithfulness import deletion_insertion, plot_faithfulness, road
from ltpa.attention.localisation import (
    POINTING_OUTCOMES,
    box_to_mask,
    centre_prior,
    energy_pointing_game,
    pointing_game,
    pointing_outcomes,
    random_map,
    zhang_tolerance,
)
from ltpa.attention.maps import PLACE_MODES, AttentionMaps, compute_maps, place_on_image
from ltpa.attention.metrics import METRICS, POINTING_VARIANTS, metrics_markdown
from ltpa.attention.metrics.wsol import best_box_iou, box_accuracy_scores, boxes_from_mask, pixel_average_precision
from ltpa.attention.parts import part_assignments, part_table, plot_part_table
from ltpa.attention.peaks import peak_pixels
from ltpa.attention.report import localise, localise_trained, write_localisation_report
from ltpa.attention.sanity import sanity_check, sanity_trained, write_sanity_report
from ltpa.attention.tensorboard import attention_overlay_image, log_attention_overlays
from ltpa.attention.segmentation import jaccard_curve, segmentation_scores
from ltpa.attention.overlays import (
    DISPLAY_MODES,
    attention_grid,
    denormalise,
    normalise_for_display,
    overlay,
    save_figure,
)

__all__ = [
    "CAM_METHODS",
    "DISPLAY_MODES",
    "METRICS",
    "PLACE_MODES",
    "POINTING_OUTCOMES",
    "POINTING_VARIANTS",
    "AttentionMaps",
    "attention_grid",
    "attention_overlay_image",
    "best_box_iou",
    "box_accuracy_scores",
    "box_to_mask",
    "boxes_from_mask",
    "centre_prior",
    "compute_maps",
    "deletion_insertion",
    "denormalise",
    "diagnose",
    "energy_pointing_game",
    "explain",
    "gap_cam_maps",
    "grad_cam_maps",
    "jaccard_curve",
    "localise",
    "localise_trained",
    "log_attention_overlays",
    "map_statistics",
    "metrics_markdown",
    "normalise_for_display",
    "overlay",
    "part_assignments",
    "part_table",
    "peak_pixels",
    "pixel_average_precision",
    "place_on_image",
    "plot_faithfulness",
    "plot_part_table",
    "pointing_game",
    "pointing_outcomes",
    "random_map",
    "road",
    "sanity_check",
    "sanity_trained",
    "save_figure",
    "segmentation_scores",
    "summarise_maps",
    "write_localisation_report",
    "write_sanity_report",
    "zhang_tolerance",
]
