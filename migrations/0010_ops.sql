-- What ops see (DESIGN.md, Round 2).

-- One row per sweep run, written by the sweep itself (kept 30 days): "the clock is dead" is one
-- query, one gauge and one alert away.
CREATE TABLE sweep_runs (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    counts       jsonb,
    error        text
);
CREATE INDEX sweep_runs_success_idx ON sweep_runs (name, finished_at DESC) WHERE error IS NULL;
CREATE INDEX sweep_runs_started_idx ON sweep_runs (started_at);

-- A flood of forged deliveries cannot fill the disk: past the per-address limit, the address's
-- last stored row of that minute counts the rest.
ALTER TABLE hyperswitch_webhook_log ADD COLUMN suppressed_count integer NOT NULL DEFAULT 0;

-- Gauges read at scrape time walk only what needs a human.
CREATE INDEX webhook_log_error_idx ON hyperswitch_webhook_log (received_at)
    WHERE processing_result LIKE 'error%';
CREATE INDEX reconcile_state_human_idx ON reconcile_state (first_checked_at)
    WHERE gave_up_at IS NOT NULL OR checks >= 5;
CREATE INDEX refunds_failed_automatic_idx ON refunds (failed_at) WHERE automatic AND status = 'failed';
