"""`inferd repo`: work on a model repository without serving it.

`init` writes a model file as a repository folder with its auto-completed config, `validate` lists every problem
of a repository with its file and line, `show` prints a model's effective config (after auto-complete). They use
the server's own config reading, auto-complete and checks (config.py, the model manager), so what they say is what
`inferd serve` would do.
"""

from .command import add_repo_parser
from .locate import field_lines, line_of
from .validate import Problem, validate_repository

__all__ = ["Problem", "add_repo_parser", "field_lines", "line_of", "validate_repository"]
