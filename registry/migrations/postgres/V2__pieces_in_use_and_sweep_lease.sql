-- Chunk-store pieces a job declared before looking for them (JSON array): a sweep keeps
-- them while the job is queued, running or waiting.
ALTER TABLE jobs ADD COLUMN pieces_in_use TEXT;
-- The chunk store's sweep lease (one row): while a sweep holds it no job declares pieces,
-- and a declaration reads it under a shared row lock that the sweep's UPDATE waits for.
CREATE TABLE gc_state (id INTEGER PRIMARY KEY, sweeping_until DOUBLE PRECISION);
INSERT INTO gc_state (id) VALUES (1);
-- Idle workers of every process are woken (LISTEN tenpak_jobs) when a job is queued
-- (new, retried, requeued) or ends (jobs waiting on it may run), instead of at their next
-- poll. Delivered at commit; repeated payloads within a transaction are folded into one.
CREATE FUNCTION tenpak_jobs_notify() RETURNS trigger AS $$
BEGIN
    IF NEW.state IN ('queued', 'done', 'failed')
       AND (TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM NEW.state) THEN
        PERFORM pg_notify('tenpak_jobs', NEW.state);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE OF state ON jobs
    FOR EACH ROW EXECUTE FUNCTION tenpak_jobs_notify();
