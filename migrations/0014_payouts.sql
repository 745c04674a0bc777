-- Sellers get paid (DESIGN.md, Round 3): payout methods, payouts, the transfers each carries, and
-- the holds ops put on a seller under review.

-- Written by the host app when a seller saves a bank account in Hyperswitch: the PSP customer and
-- its stored payout method. A seller without one is never paid (the sweep counts them).
CREATE TABLE seller_payout_methods (
    seller_id         uuid PRIMARY KEY,
    customer_id       text NOT NULL,
    payout_method_id  text NOT NULL,
    payout_type       text NOT NULL DEFAULT 'bank'
                      CHECK (payout_type IN ('card', 'bank', 'wallet', 'bank_redirect')),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- One payout of a seller's whole available balance in one currency. The row and its ledger
-- posting commit before POST /payouts/create; `merchant_reference` ("po_" + base32 of id) is the
-- merchant_order_reference_id the PSP keeps, so an ambiguous create is found again by it.
-- The method it was sent to is copied, so a resend after an ambiguous answer sends the same body.
CREATE TABLE payouts (
    id                    uuid PRIMARY KEY,
    seller_id             uuid NOT NULL,
    amount                bigint NOT NULL CHECK (amount > 0),
    currency              text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status                text NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'paid', 'failed', 'reversed')),
    hyperswitch_payout_id text UNIQUE,
    merchant_reference    text NOT NULL UNIQUE,
    customer_id           text NOT NULL,
    payout_method_id      text NOT NULL,
    payout_type           text NOT NULL,
    psp_status            text,  -- the last PayoutStatus the PSP reported, final or not
    error_message         text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    submitted_at          timestamptz,
    paid_at               timestamptz,
    failed_at             timestamptz,
    reversed_at           timestamptz
);
-- At most one payout in flight per seller and currency: the last word when two sweeps race.
CREATE UNIQUE INDEX payouts_one_pending ON payouts (seller_id, currency) WHERE status = 'pending';
-- The reconciler's payouts phase, the in-transit gauges and `status`: the pending ones.
CREATE INDEX payouts_pending_idx ON payouts (created_at) WHERE status = 'pending';
-- `payouts --seller S`, newest first.
CREATE INDEX payouts_seller_idx ON payouts (seller_id, created_at DESC);
-- `payouts`, newest first; failures of the last day (status, the alert).
CREATE INDEX payouts_created_idx ON payouts (created_at DESC);
CREATE INDEX payouts_failed_idx ON payouts (failed_at) WHERE failed_at IS NOT NULL;
CREATE INDEX payouts_reversed_idx ON payouts (reversed_at) WHERE reversed_at IS NOT NULL;

-- The transfers a payout carries: set when it is created, `completed` when it is paid, cleared
-- when it fails or the bank returns it.
ALTER TABLE seller_transfers ADD COLUMN payout_id uuid REFERENCES payouts (id);
CREATE INDEX seller_transfers_payout_idx ON seller_transfers (payout_id) WHERE payout_id IS NOT NULL;
-- What the next payout of a seller may carry: pending, not in a payout yet.
CREATE INDEX seller_transfers_unpaid_idx ON seller_transfers (seller_id, currency)
    WHERE status = 'pending' AND payout_id IS NULL;

-- A seller under review is never paid: `hold-payouts` opens a hold, `release-payouts` closes it.
-- Closed holds are kept (who was held, why, when).
CREATE TABLE seller_payout_holds (
    id           bigserial PRIMARY KEY,
    seller_id    uuid NOT NULL,
    reason       text NOT NULL CHECK (btrim(reason) <> ''),
    held_at      timestamptz NOT NULL DEFAULT now(),
    released_at  timestamptz
);
CREATE UNIQUE INDEX seller_payout_holds_one_open ON seller_payout_holds (seller_id) WHERE released_at IS NULL;

-- The hold release: orders whose refund window has passed and whose earnings are still held.
-- Its cost is the orders due, not the table (orders inside their window are skipped by range).
CREATE INDEX orders_hold_due_idx ON orders (refund_deadline)
    WHERE hold_released_at IS NULL AND status IN ('completed', 'refunded', 'charged_back');

-- The reconciler remembers what it asked the PSP about payouts too.
ALTER TABLE reconcile_state DROP CONSTRAINT reconcile_state_kind_check;
ALTER TABLE reconcile_state ADD CONSTRAINT reconcile_state_kind_check
    CHECK (kind IN ('order', 'refund', 'subscription', 'invoice', 'payout'));
