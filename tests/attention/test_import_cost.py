"""Importing ltpa.attention stays cheap: grad-cam (OpenCV, scikit-learn) loads on first use only."""
import subprocess
import sys


def test_importing_ltpa_attention_does_not_import_grad_cam():
    code = ("import sys, ltpa.attention as a; "
            "assert 'pytorch_grad_cam' not in sys.modules, 'imported at import time'; "
            "assert list(a.CAM_METHODS) == ['gradcam', 'gradcam++', 'layercam'] and 'gradcam' in a.CAM_METHODS; "
            "assert 'pytorch_grad_cam' not in sys.modules, 'imported by a name lookup'; "
            "assert a.CAM_METHODS['layercam'].__name__ == 'LayerCAM'; "
            "assert 'pytorch_grad_cam' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
