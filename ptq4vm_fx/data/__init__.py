"""Data: the bundled digits set and model, and ImageNet-style image folders.

``bundled_model()`` is the trained digits Vim (``bundled_model(name)``: one of ``BUNDLED_MODELS``, a
small trained model of each family) and ``bundled_digits(split)`` their images and labels, so the
whole workflow runs with nothing downloaded.
"""

from .bundled import BUNDLED_MODELS, MODEL_NAME, bundled_digits, bundled_model

__all__ = ["bundled_model", "bundled_digits", "MODEL_NAME", "BUNDLED_MODELS"]
