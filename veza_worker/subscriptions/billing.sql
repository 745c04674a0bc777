-- claim_ended_trials --
-- Trials past their end, oldest first; SKIP LOCKED lets several sweeps share the work. A trial
-- canceled at its end is left to end_canceled: it is never invoiced.
SELECT id, user_id, plan_id, status, trial_ends_at, current_period_start, current_period_end,
       payment_method_id, cancel_at_period_end, canceled_at, past_due_since, dunning_step,
       pending_plan_id
  FROM user_subscriptions
 WHERE status = 'trialing'
   AND trial_ends_at <= now()
   AND NOT cancel_at_period_end
 ORDER BY trial_ends_at
 LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED;

-- end_canceled --
-- Subscriptions canceled at period end whose period (or trial) is over: canceled, not renewed.
-- Each arm reads its own partial index (user_subscriptions_renewal_idx, user_subscriptions_trial_idx).
WITH active_due AS (
    SELECT id FROM user_subscriptions
     WHERE status = 'active' AND cancel_at_period_end AND current_period_end <= now()
     ORDER BY current_period_end LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), trial_due AS (
    SELECT id FROM user_subscriptions
     WHERE status = 'trialing' AND cancel_at_period_end AND trial_ends_at <= now()
     ORDER BY trial_ends_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
UPDATE user_subscriptions s
   SET status = 'canceled', canceled_at = now(), updated_at = now()
 WHERE s.id IN (SELECT id FROM active_due UNION ALL SELECT id FROM trial_due)
RETURNING s.id;

-- activate_free --
-- A free plan (a trial of one ending): active, with no period, never renewed.
UPDATE user_subscriptions
   SET status = 'active', current_period_start = now(), current_period_end = NULL, updated_at = now()
 WHERE id = %(subscription_id)s;

-- claim_due_renewals --
-- Active paid subscriptions whose period has ended and that have no payment under way, oldest
-- first (user_subscriptions_renewal_idx: the cost is the due rows', not the table's).
SELECT s.id
  FROM user_subscriptions s
  JOIN subscription_plans p ON p.id = s.plan_id
 WHERE s.status = 'active'
   AND s.current_period_end <= now()
   AND NOT s.cancel_at_period_end
   AND p.amount > 0
   AND NOT EXISTS (SELECT 1 FROM subscription_invoices i
                    WHERE i.subscription_id = s.id AND i.status = 'pending')
 ORDER BY s.current_period_end
 LIMIT %(limit)s
   FOR UPDATE OF s SKIP LOCKED;

-- claim_dunning --
-- past_due subscriptions with something due (user_subscriptions_past_due_idx): `retry` when the
-- next step of the schedule has come and nothing is pending; else the dunning is over: the last
-- retry failed, or (no saved method) the last step's time has passed.
SELECT s.id,
       s.payment_method_id IS NOT NULL AND s.dunning_step < cardinality(%(delays)s::interval[]) AS retry
  FROM user_subscriptions s
 WHERE s.status = 'past_due'
   AND CASE
       WHEN s.payment_method_id IS NULL
           THEN s.past_due_since + (%(delays)s::interval[])[cardinality(%(delays)s::interval[])] <= now()
       WHEN EXISTS (SELECT 1 FROM subscription_invoices i
                     WHERE i.subscription_id = s.id AND i.status = 'pending')
           THEN false
       WHEN s.dunning_step < cardinality(%(delays)s::interval[])
           THEN s.past_due_since + (%(delays)s::interval[])[s.dunning_step + 1] <= now()
       ELSE true
       END
 ORDER BY s.past_due_since
 LIMIT %(limit)s
   FOR UPDATE OF s SKIP LOCKED;

-- next_dunning_step --
UPDATE user_subscriptions
   SET dunning_step = dunning_step + 1, updated_at = now()
 WHERE id = %(subscription_id)s;

-- unsent_invoices --
-- Pending invoices whose create never got an answer (a crash between the commit and the call, or
-- an ambiguous failure), oldest first (subscription_invoices_pending_idx). Never for a
-- subscription that is over: the reconciler cancels that payment, nobody sends it.
SELECT i.id
  FROM subscription_invoices i
  JOIN user_subscriptions s ON s.id = i.subscription_id
 WHERE i.status = 'pending'
   AND i.submitted_at IS NULL
   AND i.created_at < now() - %(older_than)s
   AND s.status NOT IN ('expired', 'canceled')
 ORDER BY i.created_at
 LIMIT %(limit)s;

-- stale_upgrades --
-- Upgrades (proration invoices) still pending once their period has ended, oldest first
-- (subscription_invoices_pending_idx): they are cancelled before the renewal bills the period.
SELECT i.id
  FROM subscription_invoices i
  JOIN user_subscriptions s ON s.id = i.subscription_id
 WHERE i.status = 'pending'
   AND i.kind = 'proration'
   AND s.current_period_end <= now()
 ORDER BY i.created_at
 LIMIT %(limit)s;
