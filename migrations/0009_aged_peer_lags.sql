-- The late-node rule (0007) compares this node's canary lag with its peers'. A peer's row says
-- what its lag was when it last wrote; since then the peer may have stalled, so its lag now is
-- anywhere up to that value plus the row's age. A late node must only send its clients to a peer
-- that is healthy even in the worst case: under a slow Postgres the canary rounds themselves are
-- slow, rows grow old, and a node that crosses the threshold first saw its peers' last healthy
-- lags and closed its sockets while every node was late. So peers' lags are answered aged by
-- the time since they were written (the database's clock, the same for every node).
CREATE OR REPLACE FUNCTION syncline.canary(
    node_id text, payload jsonb, lag_ms bigint, fresh_ms bigint,
    OUT out_head bigint, OUT out_queue_usage double precision, OUT out_peers text[], OUT out_peer_lags_ms bigint[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
BEGIN
    IF canary.node_id IS NULL OR length(canary.node_id) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'syncline.canary: node_id must be 1-200 characters';
    END IF;
    INSERT INTO syncline.nodes AS n (node_id, seen_at, lag_ms)
    VALUES (canary.node_id, v_now, greatest(coalesce(canary.lag_ms, 0), 0))
    ON CONFLICT ON CONSTRAINT nodes_pkey DO UPDATE SET seen_at = EXCLUDED.seen_at, lag_ms = EXCLUDED.lag_ms;
    PERFORM syncline.publish('syncline.canary', canary.payload);
    out_head := syncline.head();
    out_queue_usage := pg_notification_queue_usage();
    SELECT coalesce(array_agg(n.node_id ORDER BY n.node_id), '{}'),
           coalesce(array_agg(n.lag_ms + greatest(0, (extract(epoch FROM v_now - n.seen_at) * 1000)::bigint) ORDER BY n.node_id), '{}')
    INTO out_peers, out_peer_lags_ms
    FROM syncline.nodes n
    WHERE n.node_id <> canary.node_id AND n.seen_at > v_now - make_interval(secs => canary.fresh_ms / 1000.0);
    -- Nodes gone for a day are forgotten (the table stays as small as the fleet).
    DELETE FROM syncline.nodes n WHERE n.seen_at < v_now - interval '1 day';
END;
$$;
