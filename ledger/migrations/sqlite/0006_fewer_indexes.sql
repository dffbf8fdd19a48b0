-- Every index is written by every request, while these two served only
-- GET /arbstr/requests filtered by provider or client (stats read the
-- hourly rollups). Without them such a listing reads rows newest first
-- until its page is full: fast for a provider or client with any share
-- of the traffic, a scan of the range for one with none (since/until
-- bound it). docs/ledger.md: How fast.
DROP INDEX requests_provider_time;
DROP INDEX requests_client_time;
