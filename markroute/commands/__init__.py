"""One module per `markroute` subcommand; each exposes `command`."""
