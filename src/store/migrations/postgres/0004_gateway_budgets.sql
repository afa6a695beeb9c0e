-- The gateway's budgets (the `quota` claim) per root run, summed over the gateway replicas
-- sharing this database. Each gateway adds what it charged since its last flush
-- (`requests = requests + delta`) and reads back the totals, its own and those other
-- replicas changed since (`updated_at`, the database's clock in milliseconds, so replicas'
-- clocks need not agree). `expires_at` is the latest expiry of the run's tokens any gateway
-- saw; past it (and the leeway) the row may be swept.
CREATE TABLE gateway_budgets (
    root_run   TEXT PRIMARY KEY,
    requests   BIGINT NOT NULL,
    tokens     BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX gateway_budgets_updated_at ON gateway_budgets (updated_at);
CREATE INDEX gateway_budgets_expires_at ON gateway_budgets (expires_at);
