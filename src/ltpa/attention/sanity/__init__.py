"""Sanity checks for attention maps (Adebayo et al., NeurIPS 2018): model-parameter
randomisation, cascading and independent, with similarities per stage and a verdict in words."""
from ltpa.attention.sanity.check import (MODES, check_options, explain_sanity, plot_sanity, sanity_check, sanity_trained,
                                         write_sanity_report)
from ltpa.attention.sanity.randomise import (BN_STATS, INITS, ParameterGroup, parameter_groups, randomise,
                                             randomised_copy, recompute_bn_stats)

__all__ = ["BN_STATS", "INITS", "MODES", "ParameterGroup", "check_options", "explain_sanity", "parameter_groups", "plot_sanity",
           "randomise", "randomised_copy", "recompute_bn_stats", "sanity_check", "sanity_trained",
           "write_sanity_report"]
