"""Data: the bundled digits set and model, and ImageNet-style image folders."""
