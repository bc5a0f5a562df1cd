"""Experiments: the config schema, the shipped presets, building a run from a config,
and the sweep and report tools.

Submodules are imported where needed; ``config`` and ``presets`` stay free of torch.
"""
