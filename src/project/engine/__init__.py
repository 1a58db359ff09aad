"""The engine: everything that makes any recipe train fast, resume exactly, survive signals and bad input, log,
evaluate, predict and export. Users do not edit it; it is upgraded as one unit.

The recipe side (``project.models``, ``project.datamodules``, ``project.callbacks``, ``configs/``) imports only
:mod:`project.engine.api` from here (``tests/test_recipe_side.py`` enforces it).
"""
