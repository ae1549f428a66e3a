"""Look at and measure attention: maps on the image grid, overlays, and pointing games."""
from ltpa.attention.localisation import (
    box_to_mask,
    centre_prior,
    energy_pointing_game,
    pointing_game,
    random_map,
)
from ltpa.attention.maps import PLACE_MODES, AttentionMaps, compute_maps, place_on_image
from ltpa.attention.overlays import (
    DISPLAY_MODES,
    attention_grid,
    denormalise,
    normalise_for_display,
    overlay,
    save_figure,
)

__all__ = [
    "DISPLAY_MODES",
    "PLACE_MODES",
    "AttentionMaps",
    "attention_grid",
    "box_to_mask",
    "centre_prior",
    "compute_maps",
    "denormalise",
    "energy_pointing_game",
    "normalise_for_display",
    "overlay",
    "place_on_image",
    "pointing_game",
    "random_map",
    "save_figure",
]
