-- The API a request came in on: chat, embeddings, responses or messages.
-- Rows written before this column existed were all chat requests.
ALTER TABLE requests ADD COLUMN endpoint TEXT NOT NULL DEFAULT 'chat';
