-- Refunds by item, and refunds made at the PSP (DESIGN.md, Round 2).

-- Which items a refund gives back. An item is in at most one refund that is pending or
-- succeeded (checked under the order's lock by every writer); a failed refund's items are free.
CREATE TABLE refund_items (
    refund_id      uuid NOT NULL REFERENCES refunds (id),
    order_item_id  uuid NOT NULL REFERENCES order_items (id),
    PRIMARY KEY (refund_id, order_item_id)
);
CREATE INDEX refund_items_item_idx ON refund_items (order_item_id);

ALTER TABLE orders ADD COLUMN refunded_amount bigint NOT NULL DEFAULT 0
    CHECK (refunded_amount >= 0 AND refunded_amount <= total_amount);

-- A seller's transfer of an order is split when some of their items are refunded: one open
-- (not reversed) transfer per seller and order holds the unrefunded amount, the reversed pieces
-- the refunded one.
ALTER TABLE seller_transfers DROP CONSTRAINT seller_transfers_order_id_seller_id_key;
CREATE UNIQUE INDEX seller_transfers_one_open ON seller_transfers (order_id, seller_id)
    WHERE status <> 'reversed';
CREATE INDEX seller_transfers_order_idx ON seller_transfers (order_id);
-- Orders refunded before this migration were refunded whole.
UPDATE orders SET refunded_amount = total_amount WHERE status = 'refunded';
