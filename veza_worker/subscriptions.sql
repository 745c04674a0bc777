-- lock_user --
-- Serializes every subscribe of one user, so two at once cannot both create a subscription.
SELECT pg_advisory_xact_lock(hashtextextended('veza-subscribe:' || %(user_id)s::text, 0));

-- get_plan --
SELECT id, name, amount, currency, interval, trial_days
  FROM subscription_plans
 WHERE id = %(plan_id)s;

-- lock_live_subscription --
-- The user's live subscription, if any (a unique index allows one).
SELECT id, user_id, plan_id, status, trial_ends_at, current_period_end
  FROM user_subscriptions
 WHERE user_id = %(user_id)s
   AND status IN ('active', 'trialing', 'pending_payment')
   FOR UPDATE;

-- lock_subscription --
SELECT id, user_id, plan_id, status, trial_ends_at, current_period_end
  FROM user_subscriptions
 WHERE id = %(subscription_id)s
   FOR UPDATE;

-- latest_subscription --
-- The feature-gate view: the live subscription, else the most recent one.
SELECT id, user_id, plan_id, status, trial_ends_at, current_period_end
  FROM user_subscriptions
 WHERE user_id = %(user_id)s
 ORDER BY status IN ('active', 'trialing', 'pending_payment') DESC, created_at DESC
 LIMIT 1;

-- ever_trialed --
SELECT EXISTS (SELECT 1 FROM user_subscriptions WHERE user_id = %(user_id)s AND trial_ends_at IS NOT NULL);

-- insert_subscription --
INSERT INTO user_subscriptions (id, user_id, plan_id, status, trial_ends_at, current_period_start)
VALUES (%(id)s, %(user_id)s, %(plan_id)s, %(status)s,
        CASE WHEN %(trial_days)s::int > 0 THEN now() + make_interval(days => %(trial_days)s::int) END,
        CASE WHEN %(status)s = 'active' THEN now() END);

-- insert_invoice --
-- Its payment_id is derived from its own id and stored before the PSP call.
INSERT INTO subscription_invoices (id, subscription_id, amount, currency, payment_id)
VALUES (%(id)s, %(subscription_id)s, %(amount)s, %(currency)s, %(payment_id)s);

-- pending_invoice --
SELECT id, subscription_id, amount, currency, status, payment_id, client_secret
  FROM subscription_invoices
 WHERE subscription_id = %(subscription_id)s
   AND status = 'pending';

-- find_invoice_by_payment --
-- Unlocked: the caller locks the subscription first, then the invoice.
SELECT id, subscription_id FROM subscription_invoices WHERE payment_id = %(payment_id)s;

-- lock_invoice --
SELECT id, subscription_id, amount, currency, status, payment_id, client_secret
  FROM subscription_invoices
 WHERE id = %(invoice_id)s
   FOR UPDATE;

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

-- activate --
-- Paid: a period of the plan's interval starts now.
UPDATE user_subscriptions s
   SET status = 'active',
       current_period_start = now(),
       current_period_end = now() + CASE p.interval WHEN 'year' THEN interval '1 year' ELSE interval '1 month' END,
       updated_at = now()
  FROM subscription_plans p
 WHERE s.id = %(subscription_id)s
   AND p.id = s.plan_id;

-- set_status --
-- updated_at is when the row entered this status: the reconciler measures pending_payment by it.
UPDATE user_subscriptions
   SET status = %(status)s, updated_at = now()
 WHERE id = %(subscription_id)s;

-- claim_ended_trials --
-- Trials past their end, oldest first; SKIP LOCKED lets several sweeps share the work.
SELECT s.id, s.user_id, s.plan_id, s.status, s.trial_ends_at, s.current_period_end
  FROM user_subscriptions s
 WHERE s.status = 'trialing'
   AND s.trial_ends_at <= now()
 ORDER BY s.trial_ends_at
 LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED;
