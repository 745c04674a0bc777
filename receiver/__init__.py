"""The Hyperswitch webhook receiver: verify, record, enqueue."""

from __future__ import annotations
