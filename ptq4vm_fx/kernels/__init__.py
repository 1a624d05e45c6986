"""Triton kernel families, one per file, each with a pure-PyTorch ``*_ref`` beside it (DESIGN.md section 9)."""
