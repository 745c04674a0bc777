-- The ops console (DESIGN.md, Round 3): its audit of actions, its login limit, and the indexes
-- that keep each of its pages a handful of index probes at millions of rows.

-- Every action taken in the console: who, what, on which object, and the note they had to give.
CREATE TABLE ops_actions (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    username     text NOT NULL,
    action       text NOT NULL,
    object_kind  text NOT NULL,
    object_id    text NOT NULL,
    note         text NOT NULL CHECK (btrim(note) <> '')
);
CREATE INDEX ops_actions_object_idx ON ops_actions (object_kind, object_id, at);

-- Failed logins per (user, address), shared by every web process: after 5 within 15 minutes the
-- pair is refused until locked_until. A success deletes the row; old rows are pruned on the way.
CREATE TABLE ops_login_failures (
    username      text NOT NULL,
    address       text NOT NULL,
    failures      integer NOT NULL,
    first_at      timestamptz NOT NULL,
    locked_until  timestamptz,
    PRIMARY KEY (username, address)
);
CREATE INDEX ops_login_failures_first_idx ON ops_login_failures (first_at);

-- The payment a stored delivery is about (payment, refund and dispute objects all carry it), found
-- in the body without parsing it: the value after its first "payment_id" key, if that is a string.
-- A few string functions, ~3 µs a row: a regex cost 10-100 µs on each of the receiver's INSERTs.
-- It cannot raise, so no body the receiver stores can fail its INSERT; its result is at most 100
-- characters, so no body can overflow the index.
CREATE FUNCTION webhook_payment_id(payload text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    at integer := strpos(payload, '"payment_id"');
    tail text;
BEGIN
    IF at = 0 THEN
        RETURN NULL;
    END IF;
    tail := substr(payload, at + length('"payment_id"'), 100);  -- : "pay_…", …
    IF btrim(split_part(tail, '"', 1), E' \t\r\n') <> ':' OR length(tail) - length(replace(tail, '"', '')) < 2 THEN
        RETURN NULL;  -- not a string value, or one too long to be an id
    END IF;
    RETURN nullif(split_part(tail, '"', 2), '');
END $$;
-- An order's or a subscription's deliveries, for their timelines. Not partial: the planner reads
-- the expression's statistics only from a whole-table index (a partial one gets a 0.5 % guess and a
-- walk of the log in id order).
CREATE INDEX webhook_log_payment_idx ON hyperswitch_webhook_log (webhook_payment_id(payload), id);

-- The overview's (and `status`'s) results of the last hour: without it, a scan of the whole log. A
-- row is stored with processed_at NULL, so the receiver's INSERT never touches this index.
CREATE INDEX webhook_log_processed_idx ON hyperswitch_webhook_log (processed_at)
    WHERE processed_at IS NOT NULL;

-- Search by user and by seller, and a seller's or invoice's own rows.
CREATE INDEX orders_buyer_idx ON orders (buyer_id, created_at);
CREATE INDEX seller_transfers_seller_idx ON seller_transfers (seller_id, created_at);
CREATE INDEX disputes_invoice_idx ON disputes (invoice_id) WHERE invoice_id IS NOT NULL;
CREATE INDEX discrepancies_order_idx ON discrepancies (order_id) WHERE order_id IS NOT NULL;
CREATE INDEX discrepancies_invoice_idx ON discrepancies (invoice_id) WHERE invoice_id IS NOT NULL;
