-- Budgets (SPEC §12). Amounts are millisatoshis; times are milliseconds
-- since the Unix epoch (UTC), as in requests.
--
-- budget_usage holds what each budget key spent in one period. Admission
-- locks its row, so concurrent reservations of one key (from any
-- instance) take turns.
CREATE TABLE budget_usage (
	name         TEXT   NOT NULL,
	key          TEXT   NOT NULL,
	period_start BIGINT NOT NULL,
	spent        BIGINT NOT NULL DEFAULT 0,
	PRIMARY KEY (name, key, period_start)
);

-- budget_reservations holds the worst-case cost of requests in flight,
-- one row per request and budget. A row counts until expires_at: a
-- process that died stops holding budget when its lease runs out.
CREATE TABLE budget_reservations (
	id           TEXT   NOT NULL,
	name         TEXT   NOT NULL,
	key          TEXT   NOT NULL,
	period_start BIGINT NOT NULL,
	amount       BIGINT NOT NULL,
	expires_at   BIGINT NOT NULL,
	PRIMARY KEY (id, name)
);
CREATE INDEX budget_reservations_key ON budget_reservations (name, key, period_start, expires_at);
CREATE INDEX budget_reservations_expiry ON budget_reservations (expires_at);
