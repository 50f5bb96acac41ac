-- The peers' database: what a user writing a LISTEN/NOTIFY bridge would set up. Loaded by
-- bench/peers/run into its own database (`bridge`, created in the same PostgreSQL cluster as
-- Syncline's), so that neither side's triggers are charged to the other: Syncline's change capture
-- never fires on peer runs, and this NOTIFY trigger never fires on Syncline runs. Idempotent.
--
-- Same columns as the demo's public.transactions (examples/demo/schema.sql), so the load client's
-- writer runs the identical INSERT; no foreign key to accounts (the bridge has no notion of them).

CREATE TABLE IF NOT EXISTS public.transactions (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id text NOT NULL,
    amount     numeric NOT NULL,
    memo       text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS transactions_account_id ON public.transactions (account_id, created_at);

-- One NOTIFY per row, the row as JSON text in the payload (rows here are ~170 bytes; NOTIFY's
-- payload limit is 8,000 bytes, a limit real bridges hit with wider rows).
CREATE OR REPLACE FUNCTION public.bridge_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('bridge', row_to_json(OLD)::text);
    ELSE
        PERFORM pg_notify('bridge', row_to_json(NEW)::text);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS bridge_notify ON public.transactions;
CREATE TRIGGER bridge_notify
    AFTER INSERT OR UPDATE OR DELETE ON public.transactions
    FOR EACH ROW EXECUTE FUNCTION public.bridge_notify();
