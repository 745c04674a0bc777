-- lock_user --
-- Serializes every subscribe of one user, so two at once cannot both create a subscription.
SELECT pg_advisory_xact_lock(hashtextextended('veza-subscribe:' || %(user_id)s::text, 0));

-- get_plan --
SELECT id, name, amount, currency, interval, trial_days
  FROM subscription_plans
 WHERE id = %(plan_id)s;

-- lock_live_subscription --
-- The user's live subscription, if any (a unique index allows one).
SELECT id, user_id, plan_id, status, trial_ends_at, current_period_start, current_period_end,
       payment_method_id, cancel_at_period_end, canceled_at, past_due_since, dunning_step
  FROM user_subscriptions
 WHERE user_id = %(user_id)s
   AND status IN ('active', 'trialing', 'pending_payment', 'past_due')
   FOR UPDATE;

-- lock_subscription --
SELECT id, user_id, plan_id, status, trial_ends_at, current_period_start, current_period_end,
       payment_method_id, cancel_at_period_end, canceled_at, past_due_since, dunning_step
  FROM user_subscriptions
 WHERE id = %(subscription_id)s
   FOR UPDATE;

-- latest_subscription --
-- The feature-gate view: the live subscription, else the most recent one; with what the gate
-- checks besides the status (a free plan, a paid invoice).
SELECT s.id, s.user_id, s.plan_id, s.status, s.trial_ends_at, s.current_period_end,
       s.cancel_at_period_end, p.amount = 0 AS free,
       EXISTS (SELECT 1 FROM subscription_invoices i
                WHERE i.subscription_id = s.id AND i.status = 'paid') AS has_paid_invoice
  FROM user_subscriptions s
  JOIN subscription_plans p ON p.id = s.plan_id
 WHERE s.user_id = %(user_id)s
 ORDER BY s.status IN ('active', 'trialing', 'pending_payment', 'past_due') DESC, s.created_at DESC
 LIMIT 1;

-- ever_trialed --
SELECT EXISTS (SELECT 1 FROM user_subscriptions WHERE user_id = %(user_id)s AND trial_ends_at IS NOT NULL);

-- insert_subscription --
INSERT INTO user_subscriptions (id, user_id, plan_id, status, trial_ends_at, current_period_start)
VALUES (%(id)s, %(user_id)s, %(plan_id)s, %(status)s,
        CASE WHEN %(trial_days)s::int > 0 THEN now() + make_interval(days => %(trial_days)s::int) END,
        CASE WHEN %(status)s = 'active' THEN now() END);

-- insert_invoice --
-- Its payment_id is derived from its own id and stored before the PSP call. A renewal has its
-- period from the start; ON CONFLICT: another sweep already made this period's attempt.
INSERT INTO subscription_invoices
       (id, subscription_id, amount, currency, payment_id, period_start, period_end, attempt, off_session)
SELECT %(id)s, %(subscription_id)s, %(amount)s, %(currency)s, %(payment_id)s,
       %(period_start)s::timestamptz,
       %(period_start)s::timestamptz
           + CASE p.interval WHEN 'year' THEN interval '1 year' ELSE interval '1 month' END,
       coalesce((SELECT max(attempt) + 1 FROM subscription_invoices
                  WHERE subscription_id = %(subscription_id)s
                    AND period_start = %(period_start)s::timestamptz), 1),
       %(off_session)s
  FROM user_subscriptions s
  JOIN subscription_plans p ON p.id = s.plan_id
 WHERE s.id = %(subscription_id)s
    ON CONFLICT DO NOTHING
RETURNING id, subscription_id, amount, currency, status, payment_id, client_secret,
          period_start, period_end, attempt, off_session, submitted_at;

-- pending_invoice --
SELECT id, subscription_id, amount, currency, status, payment_id, client_secret,
       period_start, period_end, attempt, off_session, submitted_at
  FROM subscription_invoices
 WHERE subscription_id = %(subscription_id)s
   AND status = 'pending';

-- find_invoice_by_payment --
-- Unlocked: the caller locks the subscription first, then the invoice.
SELECT id, subscription_id FROM subscription_invoices WHERE payment_id = %(payment_id)s;

-- lock_invoice --
SELECT id, subscription_id, amount, currency, status, payment_id, client_secret,
       period_start, period_end, attempt, off_session, submitted_at
  FROM subscription_invoices
 WHERE id = %(invoice_id)s
   FOR UPDATE;

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
-- A first payment is paid: its period of the plan's interval starts now, and the invoice records it.
WITH period AS (
    SELECT s.id, now() AS start,
           now() + CASE p.interval WHEN 'year' THEN interval '1 year' ELSE interval '1 month' END AS "end"
      FROM user_subscriptions s
      JOIN subscription_plans p ON p.id = s.plan_id
     WHERE s.id = %(subscription_id)s
), invoice AS (
    UPDATE subscription_invoices i
       SET period_start = period.start, period_end = period."end"
      FROM period
     WHERE i.id = %(invoice_id)s
)
UPDATE user_subscriptions s
   SET status = 'active', current_period_start = period.start, current_period_end = period."end",
       past_due_since = NULL, dunning_step = 0,
       payment_method_id = coalesce(%(payment_method_id)s, s.payment_method_id), updated_at = now()
  FROM period
 WHERE s.id = period.id;

-- activate_period --
-- A renewal (or a recovery of one) is paid: the subscription runs for the period it paid for.
UPDATE user_subscriptions
   SET status = 'active', current_period_start = %(period_start)s, current_period_end = %(period_end)s,
       past_due_since = NULL, dunning_step = 0,
       payment_method_id = coalesce(%(payment_method_id)s, payment_method_id), updated_at = now()
 WHERE id = %(subscription_id)s;

-- activate_free --
-- A free plan (a trial of one ending): active, with no period, never renewed.
UPDATE user_subscriptions
   SET status = 'active', current_period_start = now(), current_period_end = NULL, updated_at = now()
 WHERE id = %(subscription_id)s;

-- set_past_due --
-- A renewal payment failed; dunning counts its steps from the period's first failure.
UPDATE user_subscriptions
   SET status = 'past_due', past_due_since = coalesce(past_due_since, now()), updated_at = now()
 WHERE id = %(subscription_id)s;

-- set_status --
-- updated_at is when the row entered this status.
UPDATE user_subscriptions
   SET status = %(status)s, updated_at = now()
 WHERE id = %(subscription_id)s;

-- cancel_now --
UPDATE user_subscriptions
   SET status = 'canceled', canceled_at = now(), cancel_at_period_end = false, updated_at = now()
 WHERE id = %(subscription_id)s;

-- set_cancel_at_period_end --
UPDATE user_subscriptions
   SET cancel_at_period_end = %(cancel)s, updated_at = now()
 WHERE id = %(subscription_id)s;

-- forget_payment_method --
-- mandate_revoked: renewals can no longer charge this method off-session.
UPDATE user_subscriptions
   SET payment_method_id = NULL, updated_at = now()
 WHERE payment_method_id = %(payment_method_id)s
RETURNING id;

-- subscription_of_invoice --
-- Unlocked: which subscription to lock before the invoice.
SELECT subscription_id FROM subscription_invoices WHERE id = %(invoice_id)s;
