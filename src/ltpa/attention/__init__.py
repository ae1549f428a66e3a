"""Look at and measure attention: maps on the image grid, overlays, diagnostics, pointing games,
segmentation, parts, CAM baselines, faithfulness, and one-call localisation reports."""
from ltpa.attention.cam_baselines import CAM_METHODS, gap_cam_maps, grad_cam_maps
from ltpa.attention.diagnostics import diagnose, explain, map_statistics, summarise_maps
from ltpa.attention.faithfulness import deletion_insertion, plot_faithfulness
from ltpa.attention.localisation import (
    box_to_mask,
    centre_prior,
    energy_pointing_game,
    pointing_game,
    random_map,
)
from ltpa.attention.maps import PLACE_MODES, AttentionMaps, compute_maps, place_on_image
from ltpa.attention.parts import part_assignments, part_table, plot_part_table
from ltpa.attention.report import localise, localise_trained, write_localisation_report
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
    "PLACE_MODES",
    "AttentionMaps",
    "attention_grid",
    "box_to_mask",
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
    "map_statistics",
    "normalise_for_display",
    "overlay",
    "part_assignments",
    "part_table",
    "place_on_image",
    "plot_faithfulness",
    "plot_part_table",
    "pointing_game",
    "random_map",
    "save_figure",
    "segmentation_scores",
    "summarise_maps",
    "write_localisation_report",
]
