"""Data: the bundled digits set and model, and ImageNet-style image folders.

``bundled_model()`` is the trained digits Vim and ``bundled_digits(split)`` its images and labels,
so the whole workflow runs with nothing downloaded.
"""

from .bundled import MODEL_NAME, bundled_digits, bundled_model

__all__ = ["bundled_model", "bundled_digits", "MODEL_NAME"]
