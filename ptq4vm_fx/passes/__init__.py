"""FX passes over captured Vim GraphModules, one per file: each takes a GraphModule and counts its rewrites."""
