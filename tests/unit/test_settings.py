"""Settings from the environment: every Contract variable, and one clear line naming a bad one."""

from __future__ import annotations

from datetime import timedelta

import argon2
import pytest

from veza_worker import errors
from veza_worker.settings import Settings, parse_duration


def test_defaults_match_the_contract() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5432/veza"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.hyperswitch_enabled is False
    assert settings.max_webhook_payload_bytes == 262_144
    assert settings.reconcile_interval == timedelta(hours=1)
    assert settings.reconcile_refund_orphan_after == timedelta(minutes=5)
    assert settings.reconcile_batch_size == 50
    assert settings.webhook_log_retention_days == 90
    assert settings.refund_window_days == 14


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("2d", timedelta(days=2)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RECONCILE_INTERVAL", "1hour"),
        ("RECONCILE_ORDER_STUCK_AFTER", "0m"),
        ("RECONCILE_BATCH_SIZE", "-5"),
        ("MAX_WEBHOOK_PAYLOAD_BYTES", "256k"),
        ("RECONCILE_WORKER_ENABLED", "maybe"),
        ("REFUND_WINDOW_DAYS", "1.5"),
    ],
)
def test_a_malformed_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(errors.ConfigError, match=f"^{name}"):
        Settings.from_env({name: value})


@pytest.mark.parametrize("missing", ["HYPERSWITCH_URL", "HYPERSWITCH_API_KEY"])
def test_hyperswitch_enabled_without_url_or_key_is_a_config_error(missing: str) -> None:
    env = {"HYPERSWITCH_ENABLED": "true", "HYPERSWITCH_URL": "http://psp", "HYPERSWITCH_API_KEY": "snd_k"}
    del env[missing]
    with pytest.raises(errors.ConfigError, match=f"^{missing} is required"):
        Settings.from_env(env)


def test_webhook_secrets_are_a_comma_separated_rotation_list_without_empty_keys() -> None:
    settings = Settings.from_env({"HYPERSWITCH_WEBHOOK_SECRET": " new_key , old_key,, "})
    assert settings.webhook_secrets == ("new_key", "old_key")


def test_secrets_never_appear_in_the_settings_repr() -> None:
    settings = Settings.from_env(
        {
            "HYPERSWITCH_API_KEY": "snd_api_key_value",
            "HYPERSWITCH_WEBHOOK_SECRET": "whsec_value",
            "DATABASE_URL": "postgresql://app:db_password@db/veza",
        }
    )
    text = repr(settings)
    assert "snd_api_key_value" not in text and "whsec_value" not in text and "db_password" not in text


# -- the ops console's users -------------------------------------------------------------------------

OPS_SECRET_KEY = "console-test-secret-key-0123456789abcdef"


def hash_of(password: str) -> str:
    return argon2.PasswordHasher().hash(password)


def test_ops_users_are_whitespace_separated_and_need_a_secret_key() -> None:
    alice, bob = hash_of("a"), hash_of("b")
    assert "," in alice  # why entries cannot be comma-separated
    settings = Settings.from_env(
        {"OPS_USERS": f"alice:{alice}\n  bob:{bob} ", "OPS_SECRET_KEY": OPS_SECRET_KEY}
    )
    assert settings.ops_users == (("alice", alice), ("bob", bob))
    assert alice not in repr(settings) and OPS_SECRET_KEY not in repr(settings)

    with pytest.raises(errors.ConfigError, match=r"^OPS_SECRET_KEY"):
        Settings.from_env({"OPS_USERS": f"alice:{alice}"})
    with pytest.raises(errors.ConfigError, match=r"^OPS_SECRET_KEY"):
        Settings.from_env({"OPS_USERS": f"alice:{alice}", "OPS_SECRET_KEY": "short"})
    for bad in ("alice", "alice:plaintext", f"alice:{alice},bob:{bob}", f"alice:{alice} alice:{bob}"):
        with pytest.raises(errors.ConfigError, match=r"^OPS_USERS") as raised:
            Settings.from_env({"OPS_USERS": bad, "OPS_SECRET_KEY": OPS_SECRET_KEY})
        assert "$argon2" not in str(raised.value)
    assert Settings.from_env({}).ops_users == ()
