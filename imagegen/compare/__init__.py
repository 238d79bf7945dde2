"""`compare`: one prompt across schedulers, step counts, CFG scales and seeds; a labelled grid and measured answers.

plan.py parses the axes and resolves every cell before the model loads; run.py loads once, encodes the prompt once
and runs each cell through the generation session; convergence.py measures each cell against its reference;
report.py writes the grid, CSV, JSON and HTML.
"""

from __future__ import annotations

from .plan import AXES, DEFAULT_TOLERANCE, Cell, ComparePlan, parse_axis, plan_compare
from .run import CellResult, CompareResult, run_compare

__all__ = ["AXES", "DEFAULT_TOLERANCE", "Cell", "CellResult", "ComparePlan", "CompareResult", "parse_axis",
           "plan_compare", "run_compare"]
