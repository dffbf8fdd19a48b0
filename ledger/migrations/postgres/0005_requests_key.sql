-- Rows are keyed by (time, id) instead of id alone. Request ids are random:
-- an index on id alone puts every insert on a random page; (time, id)
-- grows at its end, like the table. A retried batch has the same times and
-- ids, so it is still skipped.
ALTER TABLE requests DROP CONSTRAINT requests_pkey;
DROP INDEX requests_time;
CREATE UNIQUE INDEX requests_time ON requests (time, id);
