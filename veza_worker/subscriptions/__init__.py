"""Subscriptions: the state machine of a user's paid or free plan, and of its invoices.

    subscribe ─┬─ free plan ──────────────────────────────────────────────▶ active (no period)
               ├─ paid plan, first trial ──▶ trialing ──(trial end)──┐
               └─ paid plan ──────────────────────────────────────────┴──▶ pending_payment
    pending_payment ─(paid)─▶ active ─(period end, renewal)─▶ active ─(renewal failed)─▶ past_due
    pending_payment ─(failed)─▶ expired          past_due ─(paid, any dunning step)─▶ active
    past_due ─(dunning exhausted)─▶ expired      active|trialing ─(cancel)─▶ canceled
    active|trialing ─(change-plan)─▶ same status: an upgrade once paid, else at the renewal

Each PSP payment is one invoice; a subscription has at most one pending invoice. Every writer
locks the subscription first, then its invoice; a PSP call about an invoice is made holding the
subscription's lock, so a webhook, a sweep and a cancel about it take turns.

    model.py     the subscription and plan rows, their statuses, the writes the others share
    periods.py   what a billing period is: pure arithmetic
    invoices.py  an invoice's PSP payment: create, send, abandon, and its final word (webhook,
                 reconciler, synchronous answer); mandate_revoked
    commands.py  subscribe, complete-subscription, cancel-subscription, resume-subscription
    plan_changes.py  change-plan: an upgrade now for the prorated difference, else at period end
    billing.py   the sweeps that move subscriptions over time: trial end, renewal, dunning
    gate.py      subscription-status: whether a user's subscription grants features

Each module runs only its own .sql; the others call its functions.
"""
