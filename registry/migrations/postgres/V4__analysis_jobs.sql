-- Evaluate and optimize jobs (kinds `evaluate`, `optimize`): their request (JSON) and,
-- once done, their result (JSON: the perplexities, or the optimizer's report).
ALTER TABLE jobs ADD COLUMN params TEXT;
ALTER TABLE jobs ADD COLUMN result TEXT;
