"""markroute's exit codes: each means one thing, whatever the command (README, "Exit codes")."""

OK = 0
FAILED = 1  # invalid config, or an operation that failed and was rolled back
USAGE = 2  # wrong usage (click uses 2 too)
DRIFT = 3  # the kernel no longer matches the applied plan
ENVIRONMENT = 4  # something missing around us: not root, no nft, no such namespace
NEIGHBOURS = 5  # `status`: another program's rule drops, rejects or re-routes markroute's traffic (README)
