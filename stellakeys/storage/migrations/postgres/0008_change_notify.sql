-- The change counter also announces itself (decision 0024): the trigger that bumps it once per
-- writing transaction sends pg_notify('stellakeys_change', <new counter>) in that transaction.
-- PostgreSQL delivers a notification only when its transaction commits (never on rollback), in
-- commit order, so stores opened with max_staleness can invalidate their caches on LISTEN
-- instead of asking for the counter on every verification. Nothing else changes: the counter
-- is still the truth, the notification only a hint that it moved.
CREATE OR REPLACE FUNCTION signer.bump_change_counter() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    counter BIGINT;
BEGIN
    IF current_setting('stellakeys.bumped', true) IS DISTINCT FROM 'on' THEN
        UPDATE signer.store_state SET change_counter = change_counter + 1 WHERE id = 1
            RETURNING change_counter INTO counter;
        PERFORM set_config('stellakeys.bumped', 'on', true);
        PERFORM pg_notify('stellakeys_change', counter::text);
    END IF;
    RETURN NULL;
END
$$;
