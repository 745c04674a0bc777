-- insert_invoice --
-- Its payment_id is derived from its own id and stored before the PSP call. A renewal (and an
-- upgrade's proration) has its period from the start; ON CONFLICT: another sweep already made this
-- period's attempt, or another invoice is pending.
INSERT INTO subscription_invoices
       (id, subscription_id, amount, currency, payment_id, period_start, period_end, attempt, off_session,
        kind, plan_id)
VALUES (%(id)s, %(subscription_id)s, %(amount)s, %(currency)s, %(payment_id)s,
        %(period_start)s::timestamptz, %(period_end)s::timestamptz,
        coalesce((SELECT max(attempt) + 1 FROM subscription_invoices
                   WHERE subscription_id = %(subscription_id)s
                     AND period_start = %(period_start)s::timestamptz), 1),
        %(off_session)s, %(kind)s, %(plan_id)s)
    ON CONFLICT DO NOTHING
RETURNING id, subscription_id, amount, currency, status, payment_id, client_secret,
          period_start, period_end, attempt, off_session, submitted_at, kind, plan_id;

-- lock_invoice --
SELECT id, subscription_id, amount, currency, status, payment_id, client_secret,
       period_start, period_end, attempt, off_session, submitted_at, kind, plan_id
  FROM subscription_invoices
 WHERE id = %(invoice_id)s
   FOR UPDATE;

-- pending_invoice --
SELECT id, subscription_id, amount, currency, status, payment_id, client_secret,
       period_start, period_end, attempt, off_session, submitted_at, kind, plan_id
  FROM subscription_invoices
 WHERE subscription_id = %(subscription_id)s
   AND status = 'pending';

-- find_invoice_by_payment --
-- Unlocked: the caller locks the subscription first, then the invoice.
SELECT id, subscription_id FROM subscription_invoices WHERE payment_id = %(payment_id)s;

-- subscription_of_invoice --
-- Unlocked: which subscription to lock before the invoice.
SELECT subscription_id FROM subscription_invoices WHERE id = %(invoice_id)s;

-- mark_sent --
-- The PSP answered the create: the payment exists there, with this client_secret.
UPDATE subscription_invoices
   SET submitted_at = coalesce(submitted_at, now()),
       client_secret = coalesce(client_secret, %(client_secret)s)
 WHERE id = %(invoice_id)s;

-- store_client_secret --
UPDATE subscription_invoices
   SET client_secret = %(client_secret)s
 WHERE id = %(invoice_id)s
   AND client_secret IS NULL;

-- pay_invoice --
UPDATE subscription_invoices
   SET status = 'paid', paid_at = now()
 WHERE id = %(invoice_id)s;

-- fail_invoice --
UPDATE subscription_invoices
   SET status = 'failed', failed_at = now()
 WHERE id = %(invoice_id)s;

-- activate_first --
-- A first payment is paid: the subscription runs on its plan (a free one's upgrade: the paid plan)
-- for the period that starts now, and the invoice records that period.
WITH invoice AS (
    UPDATE subscription_invoices
       SET period_start = %(period_start)s, period_end = %(period_end)s
     WHERE id = %(invoice_id)s
)
UPDATE user_subscriptions
   SET status = 'active', current_period_start = %(period_start)s, current_period_end = %(period_end)s,
       plan_id = %(plan_id)s, pending_plan_id = NULL,
       past_due_since = NULL, dunning_step = 0,
       payment_method_id = coalesce(%(payment_method_id)s, payment_method_id), updated_at = now()
 WHERE id = %(subscription_id)s;

-- activate_period --
-- A renewal (or a recovery of one) is paid: the subscription runs for the period it paid for.
UPDATE user_subscriptions
   SET status = 'active', current_period_start = %(period_start)s, current_period_end = %(period_end)s,
       past_due_since = NULL, dunning_step = 0,
       payment_method_id = coalesce(%(payment_method_id)s, payment_method_id), updated_at = now()
 WHERE id = %(subscription_id)s;

-- pay_upgrade --
-- An upgrade's proration is paid: its plan is in force now (a pending change is overridden); the
-- period does not move. A card the customer entered for it is kept for the renewals.
UPDATE user_subscriptions
   SET plan_id = %(plan_id)s, pending_plan_id = NULL,
       payment_method_id = coalesce(%(payment_method_id)s, payment_method_id), updated_at = now()
 WHERE id = %(subscription_id)s;

-- forget_payment_method --
-- mandate_revoked: renewals can no longer charge this method off-session.
UPDATE user_subscriptions
   SET payment_method_id = NULL, updated_at = now()
 WHERE payment_method_id = %(payment_method_id)s
RETURNING id;

-- paid_upgrade --
-- The upgrade to this plan already paid in this period: what the same change-plan asked again returns.
SELECT id FROM subscription_invoices
 WHERE (subscription_id, plan_id, kind, status, period_start)
     = (%(subscription_id)s, %(plan_id)s, 'proration', 'paid', %(period_start)s::timestamptz)
 ORDER BY paid_at DESC
 LIMIT 1;
