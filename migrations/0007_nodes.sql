-- Health that means delivery (issue 15): each node publishes a canary through its own change log
-- every --canary-interval-ms and times how long its own tail takes to see it. Nodes learn each
-- other's lag through syncline.nodes, so that a node late alone sends its clients elsewhere (1001)
-- while nodes all late together (a slow Postgres) stay ready and raise the alert instead.

-- One row per node that ran a canary recently: its name (--node-id), when it last wrote (the
-- database's clock, so every node compares the same clock) and its canary lag then.
CREATE TABLE syncline.nodes (
    node_id text PRIMARY KEY CHECK (length(node_id) BETWEEN 1 AND 200),
    seen_at timestamptz NOT NULL,
    lag_ms  bigint NOT NULL CHECK (lag_ms >= 0)
);

-- Topics under 'syncline.' are the server's own (the canary): no client may subscribe to them,
-- whatever the application's topic policy says. Otherwise as in 0002 (default deny).
CREATE OR REPLACE FUNCTION syncline.authorize_topic(topic text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_policy regprocedure;
    v_ok boolean;
BEGIN
    IF starts_with(topic, 'syncline.') THEN
        RETURN false;
    END IF;
    SELECT p.policy INTO v_policy FROM syncline.topic_policies p WHERE p.id = 1;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    EXECUTE format('SELECT %s($1)', v_policy::oid::regproc) INTO v_ok USING topic;
    RETURN coalesce(v_ok, false);
END;
$$;

-- One canary round in one round trip: records this node's lag, publishes the canary on the
-- reserved topic 'syncline.canary' (positioned like any change, seen by every node's tail, sent to
-- no client), and answers what the node needs for its metrics and its late-node rule: the head,
-- pg_notification_queue_usage(), and the other nodes seen within `fresh_ms` with their lags.
-- SECURITY DEFINER: a least-privilege runtime role (0004) writes syncline.nodes only through this.
CREATE FUNCTION syncline.canary(
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
    SELECT coalesce(array_agg(n.node_id ORDER BY n.node_id), '{}'), coalesce(array_agg(n.lag_ms ORDER BY n.node_id), '{}')
    INTO out_peers, out_peer_lags_ms
    FROM syncline.nodes n
    WHERE n.node_id <> canary.node_id AND n.seen_at > v_now - make_interval(secs => canary.fresh_ms / 1000.0);
    -- Nodes gone for a day are forgotten (the table stays as small as the fleet).
    DELETE FROM syncline.nodes n WHERE n.seen_at < v_now - interval '1 day';
END;
$$;
