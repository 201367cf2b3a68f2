"""markroute: declarative policy routing with packet marks for Linux."""

__version__ = "0.1.0"
