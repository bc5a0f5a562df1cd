"""CLI subcommands: each module defines ``add_parser(subparsers)`` and sets ``run``."""
