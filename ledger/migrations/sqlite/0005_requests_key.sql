-- Rows are keyed by (time, id) instead of id alone. Request ids are random:
-- an index on id alone puts every insert on a random page, and each batch
-- then rewrites hundreds of pages; (time, id) grows at its end, like the
-- table. A retried batch has the same times and ids, so it is still
-- skipped. SQLite cannot drop a primary key: the table is rebuilt.
CREATE TABLE requests_new (
	id                TEXT    NOT NULL,
	time              INTEGER NOT NULL,
	instance          TEXT    NOT NULL DEFAULT '',
	client            TEXT    NOT NULL DEFAULT '',
	policy            TEXT    NOT NULL DEFAULT '',
	model             TEXT    NOT NULL DEFAULT '',
	provider          TEXT    NOT NULL DEFAULT '',
	upstream_model    TEXT    NOT NULL DEFAULT '',
	stream            INTEGER NOT NULL DEFAULT 0,
	status            INTEGER NOT NULL DEFAULT 0,
	outcome           TEXT    NOT NULL DEFAULT '',
	attempts          INTEGER NOT NULL DEFAULT 0,
	retries           TEXT    NOT NULL DEFAULT '',
	prompt_tokens     INTEGER NOT NULL DEFAULT 0,
	completion_tokens INTEGER NOT NULL DEFAULT 0,
	cost_sats         REAL    NOT NULL DEFAULT 0,
	dearest_cost_sats REAL    NOT NULL DEFAULT 0,
	latency_ms        INTEGER NOT NULL DEFAULT 0,
	first_event_ms    INTEGER,
	error_code        TEXT    NOT NULL DEFAULT '',
	continuations     INTEGER NOT NULL DEFAULT 0,
	complexity        REAL,
	tier              TEXT    NOT NULL DEFAULT '',
	endpoint          TEXT    NOT NULL DEFAULT 'chat'
);
INSERT INTO requests_new SELECT * FROM requests;
DROP TABLE requests;
ALTER TABLE requests_new RENAME TO requests;
CREATE UNIQUE INDEX requests_time ON requests (time, id);
CREATE INDEX requests_provider_time ON requests (provider, time);
CREATE INDEX requests_client_time ON requests (client, time);
