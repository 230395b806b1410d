"""`inferd analyze`: the Model Analyzer idea on inferd's own parts. Candidate configs are loaded through the
repository API of a server in explicit mode and measured with `inferd bench`'s load generator; a coordinate descent
(search.py) measures a fraction of the grid (space.py) that brute force would, and the report (report.py) gives
the Pareto set, the best config and a plot."""

from .command import (
    DEFAULT_MAX_INSTANCES,
    DEFAULT_PROBE_S,
    AnalyzeOptions,
    AnalyzeResult,
    analyze,
    config_text,
    options_from_args,
    run_analyze,
)
from .search import Limits, Measurement, SearchResult
from .space import Grid, Point, ServerConfig, build_grid

__all__ = ["DEFAULT_MAX_INSTANCES", "DEFAULT_PROBE_S", "AnalyzeOptions", "AnalyzeResult", "Grid", "Limits",
           "Measurement", "Point", "SearchResult", "ServerConfig", "analyze", "build_grid", "config_text",
           "options_from_args", "run_analyze"]
