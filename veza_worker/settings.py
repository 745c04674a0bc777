"""Environment variables → one frozen Settings, built once by each entry point."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from veza_worker import errors

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/veza"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

DEFAULT_DUNNING = (timedelta(days=1), timedelta(days=3), timedelta(days=5))
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# name:$argon2id$v=19$m=65536,t=3,p=4$<salt>$<hash> (argon2's PHC string; its parameters hold commas)
_OPS_USER = re.compile(
    r"^([A-Za-z0-9_.@-]{1,64}):(\$argon2(?:id|i|d)\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+)$"
)
MIN_OPS_SECRET_KEY_CHARS = 32


@dataclass(frozen=True)
class Settings:
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)  # may carry a password
    redis_url: str = field(default=DEFAULT_REDIS_URL, repr=False)
    hyperswitch_enabled: bool = False
    hyperswitch_url: str | None = None
    hyperswitch_api_key: str | None = field(default=None, repr=False)
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    max_webhook_payload_bytes: int = 262_144
    reconcile_worker_enabled: bool = True
    reconcile_interval: timedelta = timedelta(hours=1)
    reconcile_order_stuck_after: timedelta = timedelta(minutes=30)
    reconcile_refund_stuck_after: timedelta = timedelta(minutes=30)
    reconcile_refund_orphan_after: timedelta = timedelta(minutes=5)
    reconcile_subscription_stuck_after: timedelta = timedelta(minutes=30)
    reconcile_batch_size: int = 50
    webhook_log_retention_days: int = 90
    refund_window_days: int = 14
    subscription_dunning_schedule: tuple[timedelta, ...] = DEFAULT_DUNNING
    subscription_grace: timedelta = timedelta(days=3)
    subscription_payment_expires_after: timedelta = timedelta(days=1)
    reconcile_payment_expires_after: timedelta = timedelta(days=2)
    invalid_signature_rows_per_minute: int = 600
    log_format: str = "text"
    metrics_token: str | None = field(default=None, repr=False)
    ops_users: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (name, argon2 hash)
    ops_secret_key: str | None = field(default=None, repr=False)
    payouts_enabled: bool = False
    payout_interval: timedelta = timedelta(days=1)
    payout_minimum: int = 1000
    reconcile_payout_stuck_after: timedelta = timedelta(minutes=30)
    settle_interval: timedelta = timedelta(days=1)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every variable of the Contract; a bad one raises ConfigError naming it."""
        env = os.environ if env is None else env
        reader = _Reader(env)
        settings = cls(
            database_url=reader.text("DATABASE_URL", DEFAULT_DATABASE_URL),
            redis_url=reader.text("REDIS_URL", DEFAULT_REDIS_URL),
            hyperswitch_enabled=reader.boolean("HYPERSWITCH_ENABLED", False),
            hyperswitch_url=reader.optional("HYPERSWITCH_URL"),
            hyperswitch_api_key=reader.optional("HYPERSWITCH_API_KEY"),
            webhook_secrets=reader.secrets("HYPERSWITCH_WEBHOOK_SECRET"),
            max_webhook_payload_bytes=reader.positive_int("MAX_WEBHOOK_PAYLOAD_BYTES", 262_144),
            reconcile_worker_enabled=reader.boolean("RECONCILE_WORKER_ENABLED", True),
            reconcile_interval=reader.duration("RECONCILE_INTERVAL", "1h"),
            reconcile_order_stuck_after=reader.duration("RECONCILE_ORDER_STUCK_AFTER", "30m"),
            reconcile_refund_stuck_after=reader.duration("RECONCILE_REFUND_STUCK_AFTER", "30m"),
            reconcile_refund_orphan_after=reader.duration("RECONCILE_REFUND_ORPHAN_AFTER", "5m"),
            reconcile_subscription_stuck_after=reader.duration("RECONCILE_SUBSCRIPTION_STUCK_AFTER", "30m"),
            reconcile_batch_size=reader.positive_int("RECONCILE_BATCH_SIZE", 50),
            webhook_log_retention_days=reader.positive_int("HYPERSWITCH_WEBHOOK_LOG_RETENTION_DAYS", 90),
            refund_window_days=reader.positive_int("REFUND_WINDOW_DAYS", 14),
            subscription_dunning_schedule=reader.schedule("SUBSCRIPTION_DUNNING_SCHEDULE", "1d,3d,5d"),
            subscription_grace=reader.duration("SUBSCRIPTION_GRACE", "3d"),
            subscription_payment_expires_after=reader.duration("SUBSCRIPTION_PAYMENT_EXPIRES_AFTER", "1d"),
            reconcile_payment_expires_after=reader.duration("RECONCILE_PAYMENT_EXPIRES_AFTER", "2d"),
            invalid_signature_rows_per_minute=reader.positive_int("INVALID_SIGNATURE_ROWS_PER_MINUTE", 600),
            log_format=reader.choice("LOG_FORMAT", ("text", "json"), "text"),
            metrics_token=reader.optional("METRICS_TOKEN"),
            ops_users=reader.ops_users("OPS_USERS"),
            ops_secret_key=reader.optional("OPS_SECRET_KEY"),
            payouts_enabled=reader.boolean("PAYOUTS_ENABLED", False),
            payout_interval=reader.duration("PAYOUT_INTERVAL", "1d"),
            payout_minimum=reader.positive_int("PAYOUT_MINIMUM", 1000),
            reconcile_payout_stuck_after=reader.duration("RECONCILE_PAYOUT_STUCK_AFTER", "30m"),
            settle_interval=reader.duration("SETTLE_INTERVAL", "1d"),
        )
        settings.check_hyperswitch()
        settings.check_ops()
        return settings

    @property
    def refund_window(self) -> timedelta:
        return timedelta(days=self.refund_window_days)

    def check_hyperswitch(self) -> None:
        """HYPERSWITCH_ENABLED=true without its URL and API key is a configuration error."""
        if not self.hyperswitch_enabled:
            return
        required = {"HYPERSWITCH_URL": self.hyperswitch_url, "HYPERSWITCH_API_KEY": self.hyperswitch_api_key}
        for name, value in required.items():
            if not value:
                raise errors.ConfigError(f"{name} is required when HYPERSWITCH_ENABLED=true")

    def check_ops(self) -> None:
        """OPS_USERS turns the console on; its session cookie must then be signed with a real key."""
        if not self.ops_users:
            return
        if not self.ops_secret_key:
            raise errors.ConfigError("OPS_SECRET_KEY is required when OPS_USERS is set")
        if len(self.ops_secret_key) < MIN_OPS_SECRET_KEY_CHARS:
            raise errors.ConfigError(
                f"OPS_SECRET_KEY must be at least {MIN_OPS_SECRET_KEY_CHARS} characters"
                " (python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )


def parse_duration(value: str) -> timedelta:
    """`90s`, `5m`, `1h`, `2d` → timedelta; anything else raises ValueError."""
    match = _DURATION.match(value.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"expected a positive duration like 90s, 5m, 1h or 2d, got {value!r}")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


class _Reader:
    """Typed reads of one environment, each error naming its variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def optional(self, name: str) -> str | None:
        value = self._env.get(name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def boolean(self, name: str, default: bool) -> bool:
        value = self.optional(name)
        if value is None:
            return default
        if value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise errors.ConfigError(f"{name} must be true or false, got {value!r}")

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        value = (self.optional(name) or default).lower()
        if value not in allowed:
            raise errors.ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def positive_int(self, name: str, default: int) -> int:
        value = self.optional(name)
        if value is None:
            return default
        if not value.isdigit() or int(value) == 0:
            raise errors.ConfigError(f"{name} must be a positive integer, got {value!r}")
        return int(value)

    def duration(self, name: str, default: str) -> timedelta:
        try:
            return parse_duration(self.optional(name) or default)
        except ValueError as exc:
            raise errors.ConfigError(f"{name}: {exc}") from exc

    def schedule(self, name: str, default: str) -> tuple[timedelta, ...]:
        """Comma-separated durations, each later than the one before (`1d,3d,5d`)."""
        text = self.optional(name) or default
        try:
            delays = tuple(parse_duration(part) for part in text.split(","))
        except ValueError as exc:
            raise errors.ConfigError(f"{name}: {exc}") from exc
        if any(later <= earlier for earlier, later in itertools.pairwise(delays)):
            raise errors.ConfigError(f"{name}: delays must increase, got {text!r}")
        return delays

    def secrets(self, name: str) -> tuple[str, ...]:
        """A comma-separated list (rotation); empty items are dropped, never used as a key."""
        return tuple(part.strip() for part in self._env.get(name, "").split(",") if part.strip())

    def ops_users(self, name: str) -> tuple[tuple[str, str], ...]:
        """`name:<argon2 hash>` entries separated by whitespace (a hash holds commas, never spaces)."""
        users: dict[str, str] = {}
        for entry in self._env.get(name, "").split():
            match = _OPS_USER.match(entry)
            if match is None:
                shown = entry.partition(":")[0][:64]  # the user's name only: never a hash in a log line
                raise errors.ConfigError(
                    f"{name}: entry for {shown!r} is not name:<argon2 hash> (veza-worker hash-password)"
                )
            if match.group(1) in users:
                raise errors.ConfigError(f"{name}: user {match.group(1)!r} is listed twice")
            users[match.group(1)] = match.group(2)
        return tuple(users.items())
