-- One row per chat request (SPEC §11). time is microseconds since the Unix
-- epoch (UTC), the same in both stores so that every query is shared.
CREATE TABLE requests (
	id                TEXT    NOT NULL PRIMARY KEY,
	time              BIGINT  NOT NULL,
	instance          TEXT    NOT NULL DEFAULT '',
	client            TEXT    NOT NULL DEFAULT '',
	policy            TEXT    NOT NULL DEFAULT '',
	model             TEXT    NOT NULL DEFAULT '',
	provider          TEXT    NOT NULL DEFAULT '',
	upstream_model    TEXT    NOT NULL DEFAULT '',
	stream            BOOLEAN NOT NULL DEFAULT FALSE,
	status            INTEGER NOT NULL DEFAULT 0,
	outcome           TEXT    NOT NULL DEFAULT '',
	attempts          INTEGER NOT NULL DEFAULT 0,
	retries           TEXT    NOT NULL DEFAULT '',
	prompt_tokens     BIGINT  NOT NULL DEFAULT 0,
	completion_tokens BIGINT  NOT NULL DEFAULT 0,
	cost_sats         DOUBLE PRECISION    NOT NULL DEFAULT 0,
	dearest_cost_sats DOUBLE PRECISION    NOT NULL DEFAULT 0,
	latency_ms        BIGINT  NOT NULL DEFAULT 0,
	first_event_ms    BIGINT,
	error_code        TEXT    NOT NULL DEFAULT '',
	continuations     INTEGER NOT NULL DEFAULT 0,
	complexity        DOUBLE PRECISION,
	tier              TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX requests_time ON requests (time, id);
CREATE INDEX requests_provider_time ON requests (provider, time);
CREATE INDEX requests_client_time ON requests (client, time);
