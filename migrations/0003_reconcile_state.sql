-- What the reconciler knows of each row it has asked the PSP about: how many answers left it
-- stuck, and when it last looked. A tick skips rows another tick already checked, and the oldest
-- never-checked rows go first, so rows the PSP keeps "processing" cannot starve the others.
CREATE TABLE reconcile_state (
    kind             text NOT NULL CHECK (kind IN ('order', 'refund', 'subscription')),
    row_id           uuid NOT NULL,
    checks           integer NOT NULL DEFAULT 0,  -- PSP answers that left the row stuck
    last_psp_status  text,
    first_checked_at timestamptz NOT NULL DEFAULT now(),
    last_checked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, row_id)
);
