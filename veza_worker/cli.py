"""`veza-worker`: JSON on stdout; exit 0 ok, 1 domain error (one line on stderr), 2 usage error."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import argon2
import psycopg

from veza_worker import (
    automatic_refunds,
    db,
    discrepancies,
    disputes,
    errors,
    hyperswitch,
    ledger,
    logs,
    ops,
    orders,
    payouts,
    refunds,
    sweeps,
    webhooks,
)
from veza_worker.settings import Settings
from veza_worker.subscriptions import commands, gate, plan_changes

Command = Callable[[argparse.Namespace, Settings], Any]


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> Any:
    return db.migrate(settings.database_url)


def cmd_clock(args: argparse.Namespace, settings: Settings) -> Any:
    from veza_worker import clock  # imports the broker: only the commands that enqueue need Redis

    clock.run(settings)
    return {"stopped": True}


def sweep_command(sweep: sweeps.Sweep) -> Command:
    """`veza-worker <sweep command>`: one run now, recorded like the clock's, its counts printed."""

    def run(args: argparse.Namespace, settings: Settings) -> Any:
        client = hyperswitch.require(settings) if sweep.needs_psp else hyperswitch.from_settings(settings)
        options = {name: getattr(args, name) for name, _ in sweep.options}
        with db.connect(settings.database_url) as conn:
            counts = sweeps.run(sweep, sweeps.Context(conn, settings, client, options))
        wrong = sweep.verdict(counts) if sweep.verdict else None
        if wrong:
            raise errors.DomainError(wrong, counts)
        return counts

    return run


def cmd_replay(args: argparse.Namespace, settings: Settings) -> Any:
    from veza_worker import actors

    with db.connect(settings.database_url) as conn:
        return webhooks.replay(conn, args.log_ids, actors.process_webhook.send, force=args.force)


def cmd_confirm_order(args: argparse.Namespace, settings: Settings) -> Any:
    client = hyperswitch.require(settings)
    with db.connect(settings.database_url) as conn:
        return orders.confirm(conn, client, args.order_id)


def cmd_refund(args: argparse.Namespace, settings: Settings) -> Any:
    client = hyperswitch.require(settings)
    with db.connect(settings.database_url) as conn:
        return refunds.request(
            conn,
            client,
            args.order_id,
            args.requested_by,
            items=args.items,
            reason=args.reason,
            note=args.note,
            refund_window=settings.refund_window,
        )


def cmd_subscribe(args: argparse.Namespace, settings: Settings) -> Any:
    with db.connect(settings.database_url) as conn:
        return commands.subscribe(conn, hyperswitch.from_settings(settings), args.user_id, args.plan_id)


def cmd_complete_subscription(args: argparse.Namespace, settings: Settings) -> Any:
    with db.connect(settings.database_url) as conn:
        return commands.complete(conn, hyperswitch.from_settings(settings), args.subscription_id)


def cmd_change_plan(args: argparse.Namespace, settings: Settings) -> Any:
    with db.connect(settings.database_url) as conn:
        return plan_changes.change(
            conn,
            hyperswitch.from_settings(settings),
            args.subscription_id,
            args.plan_id,
            preview=args.preview,
        )


def cmd_subscription_status(args: argparse.Namespace, settings: Settings) -> Any:
    with db.connect(settings.database_url) as conn:
        return gate.status(conn, args.user_id, settings.subscription_grace)


def cmd_status(args: argparse.Namespace, settings: Settings) -> Any:
    with db.connect(settings.database_url) as conn:
        document, healthy = ops.status(conn, settings)
    if not healthy:
        raise errors.DomainError("a sweep is overdue or rows need a human", document)
    return document


def cmd_disputes(args: argparse.Namespace, settings: Settings) -> Any:
    with db.connect(settings.database_url) as conn:
        return disputes.listing(conn, open_only=args.open)


def cmd_cancel_subscription(args: argparse.Namespace, settings: Settings) -> Any:
    with db.connect(settings.database_url) as conn:
        return commands.cancel(conn, hyperswitch.from_settings(settings), args.subscription_id, now=args.now)


def cmd_resume_subscription(args: argparse.Namespace, settings: Settings) -> Any:
    with db.connect(settings.database_url) as conn:
        return commands.resume(conn, args.subscription_id)


def cmd_discrepancies(args: argparse.Namespace, settings: Settings) -> Any:
    with db.connect(settings.database_url) as conn:
        return discrepancies.listing(conn, open_only=args.open)


def cmd_resolve(args: argparse.Namespace, settings: Settings) -> Any:
    with db.connect(settings.database_url) as conn:
        return discrepancies.resolve(conn, args.discrepancy_id, by=args.by, note=args.note)


def cmd_seller_statement(args: argparse.Namespace, settings: Settings) -> Any:
    with db.connect(settings.database_url) as conn:
        return ledger.statement(conn, args.seller_id, currency=args.currency, limit=args.limit)


class RawOutput(str):
    """A result printed as it is, not as JSON: a hash goes straight into `OPS_USERS=name:$(...)`."""


def cmd_hash_password(args: argparse.Namespace, settings: Settings) -> Any:
    """An argon2 hash of a password read from stdin (first line) or, on a terminal, typed twice."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise errors.DomainError("the two passwords differ")
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        raise errors.DomainError("empty password")
    return RawOutput(argon2.PasswordHasher().hash(password))


def cmd_payouts(args: argparse.Namespace, settings: Settings) -> Any:
    with db.connect(settings.database_url) as conn:
        return payouts.listing(conn, seller_id=args.seller, status=args.status, limit=args.limit)


def cmd_hold_payouts(args: argparse.Namespace, settings: Settings) -> Any:
    with db.connect(settings.database_url) as conn:
        return payouts.hold(conn, args.seller_id, args.reason)


def cmd_release_payouts(args: argparse.Namespace, settings: Settings) -> Any:
    with db.connect(settings.database_url) as conn:
        return payouts.release(conn, args.seller_id)


def cmd_retry_refund(args: argparse.Namespace, settings: Settings) -> Any:
    from veza_worker import actors  # the broker: the new refund is enqueued once committed

    with db.connect(settings.database_url) as conn:
        with automatic_refunds.enqueue_after_commit(conn, actors.send_automatic_refund), conn.transaction():
            return automatic_refunds.retry(conn, args.refund_id, by=args.by, note=args.note or "")


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {value!r}") from None


def _currency(value: str) -> str:
    if len(value) != 3 or not value.isascii() or not value.isupper():
        raise argparse.ArgumentTypeError(f"not a 3-letter currency code: {value!r}")
    return value


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {value!r}")
    return int(value)


def _reason(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("a reason is required")
    return value


def _note(value: str) -> str:
    if len(value) > refunds.MAX_NOTE_CHARS:
        raise argparse.ArgumentTypeError(f"at most {refunds.MAX_NOTE_CHARS} characters")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="veza-worker", description=__doc__)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what the command does on stderr (clock always logs)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        sub = subparsers.add_parser(name, help=help, description=help)
        sub.set_defaults(func=func)
        return sub

    add("migrate", cmd_migrate, "create the database if needed and apply pending migrations")
    add("clock", cmd_clock, "run the scheduler that enqueues the periodic sweeps (blocks)")
    for sweep in sweeps.SWEEPS:
        command = add(sweep.command, sweep_command(sweep), sweep.help)
        for name, help_text in sweep.options:  # values checked by the sweep: a bad one exits 1
            command.add_argument(f"--{name}", dest=name, metavar="T", help=help_text)
    replay = add("replay", cmd_replay, "enqueue stored deliveries again")
    replay.add_argument("log_ids", metavar="LOG_ID", type=int, nargs="+")
    replay.add_argument("--force", action="store_true", help="apply again rows that already have a result")
    confirm = add("confirm-order", cmd_confirm_order, "create the PSP payment of a pending order")
    confirm.add_argument("order_id", metavar="ORDER_ID", type=_uuid)
    refund = add(
        "refund", cmd_refund, "refund items of a completed order (default: every item not yet refunded)"
    )
    refund.add_argument("order_id", metavar="ORDER_ID", type=_uuid)
    refund.add_argument("--by", dest="requested_by", metavar="USER_ID", type=_uuid, required=True)
    refund.add_argument(
        "--item",
        dest="items",
        metavar="ORDER_ITEM_ID",
        type=_uuid,
        action="append",
        help="an item to refund (repeat for several); a seller may refund only their own",
    )
    refund.add_argument("--reason", choices=refunds.REASONS, default=refunds.DEFAULT_REASON)
    refund.add_argument("--note", type=_note, help="free text, kept and sent as metadata.note")
    subscribe = add("subscribe", cmd_subscribe, "subscribe a user to a plan")
    subscribe.add_argument("user_id", metavar="USER_ID", type=_uuid)
    subscribe.add_argument("plan_id", metavar="PLAN_ID", type=_uuid)
    complete = add(
        "complete-subscription",
        cmd_complete_subscription,
        "a payable attempt (client_secret) for a pending_payment or past_due subscription",
    )
    complete.add_argument("subscription_id", metavar="SUBSCRIPTION_ID", type=_uuid)
    change = add(
        "change-plan",
        cmd_change_plan,
        "move a subscription to another plan: an upgrade now for the prorated difference, else at period end",
    )
    change.add_argument("subscription_id", metavar="SUBSCRIPTION_ID", type=_uuid)
    change.add_argument("plan_id", metavar="PLAN_ID", type=_uuid)
    change.add_argument(
        "--preview", action="store_true", help="print what it would charge now; change nothing"
    )
    status = add("subscription-status", cmd_subscription_status, "the feature-gate view of a user")
    status.add_argument("user_id", metavar="USER_ID", type=_uuid)
    add("status", cmd_status, "what on-call reads first; exit 1 when a sweep is overdue or rows need a human")
    listed = add("disputes", cmd_disputes, "the disputes, nearest challenge deadline first (JSON array)")
    listed.add_argument("--open", action="store_true", help="only disputes not closed yet")
    cancel = add("cancel-subscription", cmd_cancel_subscription, "cancel at period end (or --now)")
    cancel.add_argument("subscription_id", metavar="SUBSCRIPTION_ID", type=_uuid)
    cancel.add_argument("--now", action="store_true", help="end access now; a pending payment is cancelled")
    resume = add("resume-subscription", cmd_resume_subscription, "undo a cancel at period end")
    resume.add_argument("subscription_id", metavar="SUBSCRIPTION_ID", type=_uuid)
    found = add(
        "discrepancies", cmd_discrepancies, "what automation left to a person, oldest first (JSON array)"
    )
    found.add_argument("--open", action="store_true", help="only those not resolved yet")
    resolve = add("resolve", cmd_resolve, "close a discrepancy, saying who and why")
    resolve.add_argument("discrepancy_id", metavar="DISCREPANCY_ID", type=int)
    resolve.add_argument("--by", metavar="NAME", required=True)
    resolve.add_argument("--note", metavar="TEXT", required=True)
    statement = add(
        "seller-statement", cmd_seller_statement, "a seller's balances and ledger entries, newest first"
    )
    statement.add_argument("seller_id", metavar="SELLER_ID", type=_uuid)
    statement.add_argument("--currency", metavar="C", type=_currency)
    statement.add_argument("--limit", metavar="N", type=_positive, default=100)
    add(
        "hash-password",
        cmd_hash_password,
        "print an argon2 hash for OPS_USERS (password from stdin, or typed twice on a terminal)",
    )
    listed_payouts = add("payouts", cmd_payouts, "the payouts, newest first (JSON array)")
    listed_payouts.add_argument("--seller", metavar="SELLER_ID", type=_uuid)
    listed_payouts.add_argument("--status", choices=list(payouts.Status))
    listed_payouts.add_argument("--limit", metavar="N", type=_positive, default=100)
    held = add("hold-payouts", cmd_hold_payouts, "pay a seller under review nothing until released")
    held.add_argument("seller_id", metavar="SELLER_ID", type=_uuid)
    held.add_argument("--reason", required=True, type=_reason, help="why (kept, shown in status)")
    released = add("release-payouts", cmd_release_payouts, "lift a seller's payout hold")
    released.add_argument("seller_id", metavar="SELLER_ID", type=_uuid)
    retried = add(
        "retry-refund",
        cmd_retry_refund,
        "open a new automatic refund of a failed automatic refund's amount for the same order or invoice",
    )
    retried.add_argument("refund_id", metavar="REFUND_ID", type=_uuid)
    retried.add_argument(
        "--by", metavar="NAME", default="cli", help="who retries it (resolves its discrepancy)"
    )
    retried.add_argument("--note", type=_note, help="why (kept in the discrepancy's resolution)")
    return parser


def _json(value: Any) -> str:
    """One JSON document: times in ISO 8601, uuids as strings."""
    return json.dumps(value, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on a usage error
    # One-shot commands keep stderr to the one-line error unless asked: their result is the JSON.
    level = logging.INFO if args.verbose or args.command == "clock" else logging.CRITICAL + 1
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_format)
        result = args.func(args, settings)
    except errors.DomainError as exc:
        if exc.output is not None:
            print(_json(exc.output))
        print(f"veza-worker {args.command}: {exc}", file=sys.stderr)
        return 1
    except errors.VezaError as exc:
        print(f"veza-worker {args.command}: {exc}", file=sys.stderr)
        return 1
    except psycopg.OperationalError as exc:
        print(
            f"veza-worker {args.command}: database unavailable: {' '.join(str(exc).split())}", file=sys.stderr
        )
        return 1
    print(result if isinstance(result, RawOutput) else _json(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
