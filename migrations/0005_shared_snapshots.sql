-- Shared snapshots (docs/adr/0008-shared-snapshots.md): one snapshot read serves every subscriber
-- of a feed that asked within a short window, but each one's policy is still run with its own
-- claims, at the read's position, in the read's transaction. One call checks them all, so sharing
-- costs one round trip for authorization however many share.
--
-- claims[i] is the i-th subscriber's claims (JSON object text); result[i] whether they may read.
-- `topic` set: the topic policy (authorize_topic), else the collection's (authorize_feed).
-- Claims are set transaction-locally for each check; the caller's setting is restored afterwards
-- (the rows are then read under the claims the reader set, as for a subscriber of its own).
CREATE FUNCTION syncline.authorize_many(collection text, filter jsonb, topic text, claims text[])
RETURNS boolean[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_out boolean[] := '{}';
    v_claims text;
    v_before text := current_setting('request.jwt.claims', true);
BEGIN
    FOREACH v_claims IN ARRAY claims LOOP
        PERFORM set_config('request.jwt.claims', v_claims, true);
        IF topic IS NOT NULL THEN
            v_out := v_out || syncline.authorize_topic(topic);
        ELSE
            v_out := v_out || syncline.authorize_feed(collection, filter);
        END IF;
    END LOOP;
    PERFORM set_config('request.jwt.claims', coalesce(v_before, ''), true);
    RETURN v_out;
END;
$$;
