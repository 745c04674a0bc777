-- lock_subscription --
SELECT id, user_id, plan_id, status, trial_ends_at, current_period_start, current_period_end,
       payment_method_id, cancel_at_period_end, canceled_at, past_due_since, dunning_step,
       pending_plan_id
  FROM user_subscriptions
 WHERE id = %(subscription_id)s
   FOR UPDATE;

-- get_plan --
SELECT id, name, amount, currency, interval, trial_days
  FROM subscription_plans
 WHERE id = %(plan_id)s;

-- set_status --
-- updated_at is when the row entered this status.
UPDATE user_subscriptions
   SET status = %(status)s, updated_at = now()
 WHERE id = %(subscription_id)s;

-- set_past_due --
-- A renewal payment failed; dunning counts its steps from the period's first failure.
UPDATE user_subscriptions
   SET status = 'past_due', past_due_since = coalesce(past_due_since, now()), updated_at = now()
 WHERE id = %(subscription_id)s;

-- switch_plan --
-- The plan in force changes now (a trial's switch, a paid upgrade, a renewal applying a pending
-- change); a pending change is spent or overridden by it.
UPDATE user_subscriptions
   SET plan_id = %(plan_id)s, pending_plan_id = NULL, updated_at = now()
 WHERE id = %(subscription_id)s;

-- set_pending_plan --
-- The plan the next renewal bills (NULL: none; the plan in force renews).
UPDATE user_subscriptions
   SET pending_plan_id = %(plan_id)s, updated_at = now()
 WHERE id = %(subscription_id)s;
