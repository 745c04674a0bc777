-- Disputes and chargebacks (DESIGN.md, Round 2).

ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check CHECK (status IN
    ('pending', 'completed', 'failed', 'refund_pending', 'refunded', 'disputed', 'charged_back'));
ALTER TABLE seller_transfers DROP CONSTRAINT seller_transfers_status_check;
ALTER TABLE seller_transfers ADD CONSTRAINT seller_transfers_status_check CHECK (status IN
    ('pending', 'completed', 'failed', 'reversed', 'on_hold'));

-- One row per Hyperswitch dispute, keeping Hyperswitch's own strings (status dispute_opened…,
-- stage dispute…). Recorded even for a payment we do not know (order_id and invoice_id NULL).
CREATE TABLE disputes (
    id                     text PRIMARY KEY,            -- Hyperswitch's dispute_id
    payment_id             text NOT NULL,
    order_id               uuid REFERENCES orders (id),
    invoice_id             uuid REFERENCES subscription_invoices (id),
    amount                 bigint NOT NULL CHECK (amount >= 0),
    currency               text NOT NULL,
    stage                  text NOT NULL,
    status                 text NOT NULL,
    reason                 text,
    challenge_required_by  timestamptz,
    held                   boolean NOT NULL DEFAULT false,  -- the opening's effects were applied to the order
    deadline_warned_at     timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    closed_at              timestamptz
);
-- Open disputes, nearest deadline first: the reconciler's phase, the deadline warning, ops' list.
CREATE INDEX disputes_open_idx ON disputes (challenge_required_by) WHERE closed_at IS NULL;
CREATE INDEX disputes_order_idx ON disputes (order_id) WHERE order_id IS NOT NULL;

-- What an opening actually took from each seller (clamped at zero): a win gives back exactly this.
CREATE TABLE dispute_debits (
    dispute_id  text NOT NULL REFERENCES disputes (id),
    seller_id   uuid NOT NULL,
    currency    text NOT NULL,
    amount      bigint NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (dispute_id, seller_id)
);
