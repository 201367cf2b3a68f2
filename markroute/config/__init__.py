"""Stage 1 of the pipeline: markroute.yaml in, a validated `Model` (or diagnostics) out.

`source` reads YAML keeping positions; `validator` runs the sections in order and builds
the model: `settings`, `sets`, `uplinks` (drafts), `allocation` (their marks and tables),
`groups`, `policies`, each reading with the helpers of `reader`; `warnings` finds
configurations that load but probably do not do what was meant.
"""

from markroute.config.reader import suggest
from markroute.config.validator import Validator, load_model

__all__ = ["Validator", "load_model", "suggest"]
