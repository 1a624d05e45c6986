"""Triton kernel families, one per file, each with a pure-PyTorch ``*_ref`` beside it (docs/design.md section 9)."""
