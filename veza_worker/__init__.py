"""veza-worker: the payments back office of the Veza marketplace."""

from __future__ import annotations
