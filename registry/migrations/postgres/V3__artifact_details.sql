-- What the dashboard shows of an artifact (JSON: quality, signer, base, per-tensor bits
-- and errors); NULL for artifacts stored before.
ALTER TABLE artifacts ADD COLUMN details TEXT;
