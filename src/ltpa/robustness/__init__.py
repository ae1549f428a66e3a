"""Robustness to white-box adversarial attack (the paper's FGSM experiment, plus PGD).

``eps`` is an L-inf perturbation of the un-normalised image in ``[0, 1]`` pixel units, applied
before each model's own preprocessing (mean/std or ZCA), so models trained with different
normalisations are compared on the same perturbation::

    from ltpa.robustness import parse_eps, plot_robustness, robustness_curve

    result = robustness_curve([vgg_checkpoint, att_checkpoint], images_uint8, targets,
                              attack="fgsm", eps=parse_eps("1/255,2/255,4/255,8/255"))
    plot_robustness(result, "robustness.png")
"""
from .attacks import ATTACKS, PixelClassifier, default_step_size, fgsm, pgd, pixel_preprocess
from .evaluate import (DEFAULT_EPS, RobustnessCurve, RobustnessResult, attack_accuracy, format_table, parse_eps,
                       robustness_curve, run_robustness)
from .plot import plot_robustness

__all__ = ["ATTACKS", "DEFAULT_EPS", "PixelClassifier", "RobustnessCurve", "RobustnessResult", "attack_accuracy",
           "default_step_size", "fgsm", "format_table", "parse_eps", "pgd", "pixel_preprocess", "plot_robustness",
           "robustness_curve", "run_robustness"]
