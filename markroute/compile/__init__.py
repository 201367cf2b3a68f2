"""Stage 3 of the pipeline: a validated `Model` in, a `Plan` out (pure functions).

`chains` builds the nftables table, `policymaps` merges runs of same-shape policies into
verdict maps, `routing` derives the ip rules, routes, sysctls and uplink plans; see
docs/architecture.md for how the stages hand data on.
"""

from markroute.compile.chains import UplinkAvailability, compile_plan

__all__ = ["UplinkAvailability", "compile_plan"]
