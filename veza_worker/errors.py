"""One error tree, split by what the caller does next."""

from __future__ import annotations


class VezaError(Exception):
    """Base of every error veza-worker raises on purpose."""


class ConfigError(VezaError):
    """An environment variable is missing or malformed; the process must not start."""


class DomainError(VezaError):
    """A request that breaks a business rule; the CLI prints it and exits 1."""


class NotFound(DomainError):
    """A row the caller named does not exist."""
