"""Subcommands of the `onlineanyseg` CLI; each module has `register(subparsers)`."""
