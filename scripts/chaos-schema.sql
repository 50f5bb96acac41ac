-- scripts/chaos's schema: accounts (feeds filtered on owner, and on tier: balances crossing 1500
-- move rows in and out of the gold feed), their ledger (filtered on account), one topic per user,
-- and `transfer`, whose ledger rows carry the memo "<client_id>:<mid>" scripts/check-history counts.
-- psql variable :users and :accounts (per user) size the seed. Reads are open to every token: the
-- harness judges delivery, not authorization.
CREATE SCHEMA chaos;
CREATE TABLE public.accounts (
    id      text PRIMARY KEY,
    owner   text NOT NULL,
    tier    text NOT NULL DEFAULT 'basic',
    balance numeric NOT NULL,
    version int NOT NULL DEFAULT 1
);
CREATE TABLE public.ledger (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id text NOT NULL REFERENCES public.accounts (id),
    amount     numeric NOT NULL,
    memo       text NOT NULL
);
CREATE INDEX ledger_account ON public.ledger (account_id);

CREATE FUNCTION chaos.allow(filter jsonb) RETURNS boolean LANGUAGE sql STABLE AS $$ SELECT true $$;
CREATE FUNCTION chaos.allow_topic(topic text) RETURNS boolean LANGUAGE sql STABLE AS $$ SELECT true $$;
SELECT syncline.track('public.accounts', '{id}', '{id,owner,tier}', NULL, 'chaos.allow(jsonb)');
SELECT syncline.track('public.ledger', '{id}', '{id,account_id}', NULL, 'chaos.allow(jsonb)');
INSERT INTO syncline.topic_policies (id, policy) VALUES (1, 'chaos.allow_topic(text)')
ON CONFLICT (id) DO UPDATE SET policy = EXCLUDED.policy;

-- Seeded after tracking: the checker replays the log from empty.
INSERT INTO public.accounts (id, owner, balance)
SELECT 'u' || u || '-' || a, 'u' || u, 1000.00
FROM generate_series(0, :users - 1) AS u, generate_series(0, :accounts - 1) AS a;

-- SECURITY DEFINER: it publishes (syncline.publish writes the staging table, which the mutation
-- role may not), and the harness tests delivery, not write privileges.
CREATE FUNCTION chaos.transfer(args jsonb) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    v_from text := args ->> 'from';
    v_to text := args ->> 'to';
    v_amount numeric := (args ->> 'amount')::numeric;
    v_memo text := args ->> 'memo';
    v_sub text := nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub';
    v_account public.accounts;
    v_to_owner text;
    v_balance numeric;
BEGIN
    IF v_amount IS NULL OR v_amount <= 0 OR v_memo IS NULL OR v_from = v_to THEN
        PERFORM syncline.reject('invalid', 'transfer needs from, to (another account), a positive amount and a memo');
    END IF;
    -- Both accounts locked in id order: opposite transfers cannot deadlock.
    PERFORM 1 FROM public.accounts WHERE id IN (v_from, v_to) ORDER BY id FOR UPDATE;
    SELECT * INTO v_account FROM public.accounts WHERE id = v_from;
    SELECT owner INTO v_to_owner FROM public.accounts WHERE id = v_to;
    IF v_account.id IS NULL OR v_to_owner IS NULL THEN
        PERFORM syncline.reject('not_found', 'no such account');
    END IF;
    IF v_account.owner IS DISTINCT FROM v_sub THEN
        PERFORM syncline.reject('forbidden', 'not your account');
    END IF;
    IF v_account.balance < v_amount THEN
        PERFORM syncline.reject('insufficient_funds', 'balance too low', jsonb_build_object('balance', v_account.balance));
    END IF;
    INSERT INTO public.ledger (account_id, amount, memo) VALUES (v_from, -v_amount, v_memo), (v_to, v_amount, v_memo);
    UPDATE public.accounts SET balance = balance - v_amount, version = version + 1,
        tier = CASE WHEN balance - v_amount >= 1500 THEN 'gold' ELSE 'basic' END
    WHERE id = v_from RETURNING balance INTO v_balance;
    UPDATE public.accounts SET balance = balance + v_amount, version = version + 1,
        tier = CASE WHEN balance + v_amount >= 1500 THEN 'gold' ELSE 'basic' END
    WHERE id = v_to;
    PERFORM syncline.publish('user:' || v_to_owner, jsonb_build_object('kind', 'credit', 'memo', v_memo, 'amount', v_amount, 'account', v_to));
    RETURN jsonb_build_object('balance', v_balance);
END;
$$;
SELECT syncline.register_mutator('transfer', 'chaos.transfer(jsonb)');
GRANT USAGE ON SCHEMA chaos TO syncline_writer;
GRANT SELECT, UPDATE ON public.accounts TO syncline_writer;
GRANT SELECT, INSERT ON public.ledger TO syncline_writer;
