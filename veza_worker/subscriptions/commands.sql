-- lock_user --
-- Serializes every subscribe of one user, so two at once cannot both create a subscription.
SELECT pg_advisory_xact_lock(hashtextextended('veza-subscribe:' || %(user_id)s::text, 0));

-- lock_live_subscription --
-- The user's live subscription, if any (a unique index allows one).
SELECT id, user_id, plan_id, status, trial_ends_at, current_period_start, current_period_end,
       payment_method_id, cancel_at_period_end, canceled_at, past_due_since, dunning_step,
       pending_plan_id
  FROM user_subscriptions
 WHERE user_id = %(user_id)s
   AND status IN ('active', 'trialing', 'pending_payment', 'past_due')
   FOR UPDATE;

-- ever_trialed --
SELECT EXISTS (SELECT 1 FROM user_subscriptions WHERE user_id = %(user_id)s AND trial_ends_at IS NOT NULL);

-- insert_subscription --
INSERT INTO user_subscriptions (id, user_id, plan_id, status, trial_ends_at, current_period_start)
VALUES (%(id)s, %(user_id)s, %(plan_id)s, %(status)s,
        CASE WHEN %(trial_days)s::int > 0 THEN now() + make_interval(days => %(trial_days)s::int) END,
        CASE WHEN %(status)s = 'active' THEN now() END);

-- cancel_now --
-- A pending plan change goes with it.
UPDATE user_subscriptions
   SET status = 'canceled', canceled_at = now(), cancel_at_period_end = false, pending_plan_id = NULL,
       updated_at = now()
 WHERE id = %(subscription_id)s;

-- set_cancel_at_period_end --
-- A cancel at period end drops a pending plan change: nothing renews; resuming does not bring it back.
UPDATE user_subscriptions
   SET cancel_at_period_end = %(cancel)s,
       pending_plan_id = CASE WHEN %(cancel)s THEN NULL ELSE pending_plan_id END, updated_at = now()
 WHERE id = %(subscription_id)s;
