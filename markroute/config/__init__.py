"""Stage 1 of the pipeline: markroute.yaml in, a validated `Model` (or diagnostics) out.

`source` reads YAML keeping positions, `validator` checks each section and builds the
model, `warnings` finds configurations that load but probably do not do what was meant.
"""

from markroute.config.validator import (
    DEFAULT_PATH,
    Validator,
    config_path,
    load_model,
    suggest,
)

__all__ = ["DEFAULT_PATH", "Validator", "config_path", "load_model", "suggest"]
