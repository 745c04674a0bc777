"""One error tree, split by what the caller does next."""

from __future__ import annotations

from typing import Any


class VezaError(Exception):
    """Base of every error veza-worker raises on purpose."""


class ConfigError(VezaError):
    """An environment variable is missing or malformed; the process must not start."""


class DomainError(VezaError):
    """A request that breaks a business rule; the CLI prints it and exits 1.

    `output`, when given, is still printed as the command's JSON (say, the refund that was rejected).
    """

    def __init__(self, message: str, output: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.output = output


class NotFound(DomainError):
    """A row the caller named does not exist."""


class Forbidden(DomainError):
    """The requester may not act on this row."""


class PaymentProviderUnavailable(DomainError):
    """A create was ambiguous (timeout, 5xx): nothing changed, the reconciler settles the row."""


class PaymentProviderMisconfigured(PaymentProviderUnavailable):
    """The PSP refused our API key (401/403) on a create: nothing changed, as after an ambiguous
    failure; one ERROR named HYPERSWITCH_API_KEY. A sweep stops at the first."""


class PaymentRejected(DomainError):
    """The PSP definitively refused a create: the row it was for is failed."""


class PaymentProviderNotConfigured(DomainError):
    """A PSP call is needed but HYPERSWITCH_ENABLED, its URL or its API key is missing."""


class UnknownObject(VezaError):
    """A webhook names a PSP object we hold no row for, yet: retried, then `result` is final."""

    def __init__(self, result: str) -> None:
        super().__init__(result)
        self.result = result


class HyperswitchError(VezaError):
    """Base of every failed call to Hyperswitch."""


class HyperswitchUnavailable(HyperswitchError):
    """Timeout, dropped connection, 429 or 5xx: the PSP may or may not have acted."""


class HyperswitchRejected(HyperswitchError):
    """A definitive 4xx answer: the PSP did not act. Carries its error type, code and message."""

    def __init__(self, status: int, error_type: str, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.error_type = error_type
        self.code = code
        self.message = message


class HyperswitchNotFound(HyperswitchRejected):
    """The PSP has no such object (404)."""


class HyperswitchUnauthorized(HyperswitchRejected):
    """401 or 403 (IR_01): our API key is wrong or revoked. A misconfiguration, not an answer
    about the object: a create it refused is left as after an ambiguous failure."""
