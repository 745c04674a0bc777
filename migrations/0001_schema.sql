-- The whole schema of DESIGN.md. Money is bigint minor units + an ISO 4217 currency; ids are uuid.
-- Columns beyond the Contract are nullable or defaulted: the host app inserts the Contract ones only.

CREATE TABLE orders (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    buyer_id         uuid NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'completed', 'failed', 'refund_pending', 'refunded')),
    total_amount     bigint NOT NULL CHECK (total_amount >= 0),
    currency         text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    payment_id       text UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    refund_deadline  timestamptz
);
-- Reconciler: pending orders that reached the PSP, oldest first.
CREATE INDEX orders_stuck_idx ON orders (created_at)
    WHERE status = 'pending' AND payment_id IS NOT NULL;

CREATE TABLE order_items (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id   uuid NOT NULL REFERENCES orders (id),
    track_id   uuid NOT NULL,
    seller_id  uuid NOT NULL,
    amount     bigint NOT NULL CHECK (amount >= 0)
);
CREATE INDEX order_items_order_idx ON order_items (order_id);

CREATE TABLE licenses (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id       uuid NOT NULL REFERENCES orders (id),
    order_item_id  uuid NOT NULL UNIQUE REFERENCES order_items (id),  -- one license per item, ever
    buyer_id       uuid NOT NULL,
    track_id       uuid NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz
);
CREATE INDEX licenses_order_idx ON licenses (order_id);

CREATE TABLE seller_balances (
    seller_id   uuid NOT NULL,
    currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    balance     bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (seller_id, currency)
);

CREATE TABLE seller_transfers (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id    uuid NOT NULL REFERENCES orders (id),
    seller_id   uuid NOT NULL,
    amount      bigint NOT NULL CHECK (amount >= 0),
    currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status      text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'completed', 'failed', 'reversed')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (order_id, seller_id)  -- one transfer per seller per order, however often a webhook replays
);

CREATE TABLE refunds (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id               uuid NOT NULL REFERENCES orders (id),
    requested_by           uuid NOT NULL,
    amount                 bigint NOT NULL CHECK (amount > 0),
    currency               text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    reason                 text NOT NULL DEFAULT 'requested_by_customer'
                           CHECK (reason IN ('duplicate', 'fraudulent', 'requested_by_customer')),
    note                   text,
    status                 text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    hyperswitch_refund_id  text NOT NULL UNIQUE,
    error_message          text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    submitted_at           timestamptz,
    succeeded_at           timestamptz,
    failed_at              timestamptz
);
CREATE INDEX refunds_order_idx ON refunds (order_id);
-- At most one refund in flight per order, whatever races the CLI.
CREATE UNIQUE INDEX refunds_one_pending_per_order ON refunds (order_id) WHERE status = 'pending';
-- Reconciler: submitted refunds with no final answer, and orphans that never reached the PSP.
CREATE INDEX refunds_stuck_idx ON refunds (submitted_at)
    WHERE status = 'pending' AND submitted_at IS NOT NULL;
CREATE INDEX refunds_orphan_idx ON refunds (created_at)
    WHERE status = 'pending' AND submitted_at IS NULL;

CREATE TABLE hyperswitch_webhook_log (
    id                   bigserial PRIMARY KEY,
    received_at          timestamptz NOT NULL DEFAULT now(),
    payload              text NOT NULL,         -- the body as UTF-8, invalid bytes replaced
    payload_raw          bytea,                 -- the exact bytes, kept only when payload is not them
    signature_valid      boolean NOT NULL,
    signature_key_index  smallint,              -- which HYPERSWITCH_WEBHOOK_SECRET matched (0 = first)
    processing_result    text NOT NULL DEFAULT 'queued'
                         CHECK (processing_result IN ('queued', 'ok', 'skipped', 'signature_invalid')
                                OR processing_result LIKE 'skipped: %'
                                OR processing_result LIKE 'error: %'),
    source_ip            text,
    user_agent           text,
    request_id           text,
    event_type           text,
    event_id             text,
    processed_at         timestamptz,
    attempts             integer NOT NULL DEFAULT 0,  -- handler runs that raised
    last_error           text,
    redrive_after        timestamptz                  -- a retry is scheduled: redrive waits until then
);
CREATE INDEX webhook_log_invalid_signature_idx ON hyperswitch_webhook_log (received_at)
    WHERE NOT signature_valid;
-- Redrive: the outbox rows still waiting for a worker.
CREATE INDEX webhook_log_queued_idx ON hyperswitch_webhook_log (received_at)
    WHERE processing_result = 'queued';
CREATE INDEX webhook_log_event_idx ON hyperswitch_webhook_log (event_id) WHERE event_id IS NOT NULL;
-- Retention walks the oldest rows.
CREATE INDEX webhook_log_received_idx ON hyperswitch_webhook_log (received_at);

CREATE TABLE subscription_plans (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    amount      bigint NOT NULL CHECK (amount >= 0),  -- 0 = free
    currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    interval    text NOT NULL CHECK (interval IN ('month', 'year')),
    trial_days  integer NOT NULL DEFAULT 0 CHECK (trial_days >= 0)
);

CREATE TABLE user_subscriptions (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id               uuid NOT NULL,
    plan_id               uuid NOT NULL REFERENCES subscription_plans (id),
    status                text NOT NULL
                          CHECK (status IN ('active', 'trialing', 'pending_payment', 'expired', 'canceled')),
    trial_ends_at         timestamptz,
    current_period_start  timestamptz,
    current_period_end    timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX user_subscriptions_user_idx ON user_subscriptions (user_id);
-- A user holds at most one live subscription, whatever races the CLI.
CREATE UNIQUE INDEX user_subscriptions_one_live ON user_subscriptions (user_id)
    WHERE status IN ('active', 'trialing', 'pending_payment');
-- Reconciler: updated_at is when the row entered pending_payment.
CREATE INDEX user_subscriptions_pending_idx ON user_subscriptions (updated_at)
    WHERE status = 'pending_payment';
-- Trial end sweep.
CREATE INDEX user_subscriptions_trial_idx ON user_subscriptions (trial_ends_at)
    WHERE status = 'trialing';

CREATE TABLE subscription_invoices (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    subscription_id  uuid NOT NULL REFERENCES user_subscriptions (id),
    amount           bigint NOT NULL CHECK (amount >= 0),
    currency         text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'paid', 'failed')),
    payment_id       text UNIQUE,
    client_secret    text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    paid_at          timestamptz,
    failed_at        timestamptz
);
CREATE INDEX subscription_invoices_subscription_idx ON subscription_invoices (subscription_id);
