-- latest_subscription --
-- The feature-gate view: the live subscription, else the most recent one; with what the gate
-- checks besides the status (a free plan, a paid invoice).
SELECT s.id, s.user_id, s.plan_id, s.status, s.trial_ends_at, s.current_period_end,
       s.cancel_at_period_end, p.amount = 0 AS free,
       EXISTS (SELECT 1 FROM subscription_invoices i
                WHERE i.subscription_id = s.id AND i.status = 'paid') AS has_paid_invoice,
       s.pending_plan_id
  FROM user_subscriptions s
  JOIN subscription_plans p ON p.id = s.plan_id
 WHERE s.user_id = %(user_id)s
 ORDER BY s.status IN ('active', 'trialing', 'pending_payment', 'past_due') DESC, s.created_at DESC
 LIMIT 1;
