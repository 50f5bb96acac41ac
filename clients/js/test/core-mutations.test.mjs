// The overlay and the double-count rule, the durable queue, and the answers to mutations.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Harness, ACC, acct } from "./harness.mjs";
import { keyString, Decimal } from "../syncline.js";

const T = (from, to, amount) => ({ from, to, amount: new Decimal(amount) });
/** Every value a row's balance was shown with, one per publish (consecutive repeats collapsed). */
function shownHistory(h, id) {
  const out = [];
  for (const snap of h.view(ACC).history) {
    const r = snap.get(keyString({ id }));
    const v = r ? String(r.balance) : "absent";
    if (out[out.length - 1] !== v) out.push(v);
  }
  return out;
}
const upd = (id, balance) => ({ op: "update", key: { id }, row: acct(id, balance) });

function liveAlice(o) {
  const h = new Harness(o);
  h.subscribe("q", ACC);
  const [id] = h.live([{ rows: [acct("chk", "1250.00"), acct("sav", "9000.50")] }]);
  return { h, id };
}

test("a mutation shows at once; its own changes before the ack are held; the ack publishes them and drops the overlay in one publish", () => {
  const { h, id } = liveAlice();
  h.mutate("transfer", T("chk", "sav", "100.50"));
  assert.equal(h.shown(ACC, "chk"), "1149.50");
  assert.equal(h.shown(ACC, "sav"), "9101.00");
  assert.deepEqual([...h.view(ACC).pending].sort(), [keyString({ id: "chk" }), keyString({ id: "sav" })]);
  assert.equal(h.takeSent()[0].mid, 1);
  const n = h.view(ACC).publishes;
  h.recv({ type: "changes", sub: id, cursor: "E.2", changes: [upd("chk", "1149.50")] });
  h.recv({ type: "changes", sub: id, cursor: "E.2", changes: [upd("sav", "9101.00")] });
  assert.equal(h.view(ACC).publishes, n, "confirmed changes wait for the answer");
  h.recv({ type: "ack", mid: 1, cursor: "E.2", result: null });
  assert.equal(h.view(ACC).publishes, n + 1, "one publish at the ack");
  assert.equal(h.view(ACC).pending.size, 0);
  assert.deepEqual(shownHistory(h, "chk"), ["1250.00", "1149.50"]);
  assert.deepEqual(shownHistory(h, "sav"), ["9000.50", "9101.00"]);
  assert.equal(h.outcomes[0].ok, true);
});

test("changes from others while a mutation is unanswered are published with the answer; with nothing pending, at once", () => {
  const { h, id } = liveAlice();
  h.mutate("transfer", T("chk", "bob", "50"));
  h.recv({ type: "changes", sub: id, cursor: "E.2", changes: [upd("sav", "9500.50")] });
  assert.equal(h.shown(ACC, "sav"), "9000.50");
  h.recv({ type: "changes", sub: id, cursor: "E.3", changes: [upd("chk", "1200.00")] });
  h.recv({ type: "ack", mid: 1, cursor: "E.3", result: null });
  assert.equal(h.shown(ACC, "sav"), "9500.50");
  assert.equal(h.shown(ACC, "chk"), "1200.00");
  assert.deepEqual(shownHistory(h, "chk"), ["1250.00", "1200.00"]);
  h.recv({ type: "changes", sub: id, cursor: "E.4", changes: [upd("sav", "1.00")] });
  assert.equal(h.shown(ACC, "sav"), "1.00", "nothing pending: published at once");
});

test("pipelined mutations in one batch: the first ack keeps the second's overlay and the buffer; the last ack publishes all", () => {
  const { h, id } = liveAlice();
  h.mutate("transfer", T("chk", "bob", "100"));
  h.mutate("transfer", T("chk", "bob", "200"));
  h.mutate("transfer", T("sav", "chk", "1000"));
  assert.equal(h.shown(ACC, "chk"), "1950.00");
  // One group commit: all three effects in one transaction, arriving before any ack.
  h.recv({ type: "changes", sub: id, cursor: "E.9", changes: [upd("chk", "1950.00"), upd("sav", "8000.50")] });
  h.recv({ type: "ack", mid: 1, cursor: "E.9", result: null });
  assert.equal(h.shown(ACC, "chk"), "1950.00");
  h.recv({ type: "ack", mid: 2, cursor: "E.9", result: null });
  assert.equal(h.shown(ACC, "chk"), "1950.00");
  assert.equal(h.core.statusNow().pending, 1);
  h.recv({ type: "ack", mid: 3, cursor: "E.9", result: null });
  assert.equal(h.shown(ACC, "chk"), "1950.00");
  assert.equal(h.shown(ACC, "sav"), "8000.50");
  assert.equal(h.view(ACC).pending.size, 0);
  assert.deepEqual(shownHistory(h, "chk"), ["1250.00", "1150.00", "950.00", "1950.00"]);
  assert.deepEqual(shownHistory(h, "sav"), ["9000.50", "8000.50"]);
});

test("pipelined mutations in separate transactions with others' changes interleaved never show an effect twice or not at all", () => {
  const { h, id } = liveAlice();
  h.mutate("transfer", T("chk", "bob", "10"));
  h.mutate("transfer", T("chk", "bob", "20"));
  const allowed = new Set(["1250.00", "1240.00", "1220.00", "1320.00"]); // 1320 = +100 deposit by someone else, shown with both effects
  h.recv({ type: "changes", sub: id, cursor: "E.2", changes: [upd("chk", "1240.00")] });
  h.recv({ type: "changes", sub: id, cursor: "E.3", changes: [upd("chk", "1340.00")] }); // someone deposits 100
  h.recv({ type: "ack", mid: 1, cursor: "E.2", result: null });
  h.recv({ type: "changes", sub: id, cursor: "E.4", changes: [upd("chk", "1320.00")] });
  h.recv({ type: "ack", mid: 2, cursor: "E.4", result: null });
  for (const v of shownHistory(h, "chk")) assert.ok(allowed.has(v), `shown ${v}`);
  assert.equal(h.shown(ACC, "chk"), "1320.00");
});

test("a reject drops its overlay at once, also while another mutation is in flight, and never touches confirmed rows", () => {
  const { h, id } = liveAlice();
  h.mutate("transfer", T("chk", "bob", "5000"));
  h.mutate("transfer", T("chk", "bob", "50"));
  assert.equal(h.shown(ACC, "chk"), "-3800.00");
  h.recv({ type: "reject", mid: 1, code: "insufficient_funds", message: "no", details: { balance: new Decimal("1250.00") } });
  assert.equal(h.shown(ACC, "chk"), "1200.00", "only mid 2's effect remains");
  assert.equal(h.outcomes[0].error.code, "insufficient_funds");
  assert.equal(h.outcomes[0].error.details.balance.toString(), "1250.00");
  assert.equal(h.store.loadSync().mutations.length, 1, "the rejected one left the store");
  h.recv({ type: "changes", sub: id, cursor: "E.5", changes: [upd("chk", "1200.00")] });
  h.recv({ type: "ack", mid: 2, cursor: "E.5", result: null });
  assert.deepEqual(shownHistory(h, "chk"), ["1250.00", "-3750.00", "-3800.00", "1200.00"]);
  assert.equal(h.store.loadSync().mutations.length, 0);
});

test("a mutation not yet stored is not sent and does not hold back confirmed changes; its effect is re-run over them", () => {
  const { h, id } = liveAlice({ autoPersist: false });
  h.commitPersists();
  h.mutate("transfer", T("chk", "bob", "100"));
  assert.deepEqual(h.takeSent(), [], "nothing sent before the store committed");
  h.recv({ type: "changes", sub: id, cursor: "E.3", changes: [upd("chk", "2250.00")] });
  assert.equal(h.shown(ACC, "chk"), "2150.00", "the new confirmed row with the effect re-run over it");
  h.commitPersists();
  const sent = h.takeSent();
  assert.equal(sent.length, 1);
  assert.equal(sent[0].type, "mutate");
  assert.equal(sent[0].amount, undefined);
  assert.equal(String(sent[0].args.amount), "100");
});

test("confirmed rows are stored with their cursor only when published: a reload during a held buffer resumes before it", () => {
  const { h, id } = liveAlice();
  h.mutate("transfer", T("chk", "sav", "250"));
  h.recv({ type: "changes", sub: id, cursor: "E.7", changes: [upd("chk", "1000.00"), upd("sav", "9250.50")] });
  const f = h.store.loadSync().feeds[0];
  assert.equal(f.cursor, "E.1");
  assert.equal(String(new Map(f.rows).get(keyString({ id: "chk" })).balance), "1250.00");
  h.boot(); // reload
  h.subscribe("q", ACC);
  assert.equal(h.shown(ACC, "chk"), "1000.00", "stored rows + the re-run effect, at once");
  h.start().open().welcome(1);
  const sent = h.takeSent();
  assert.deepEqual(sent.map((m) => m.type), ["hello", "subscribe", "mutate"]);
  assert.equal(sent[1].after, "E.1");
  assert.equal(sent[2].mid, 1);
  const sid = sent[1].id;
  h.recv({ type: "subscribed", id: sid, mode: "resume", cursor: "E.1" });
  h.recv({ type: "changes", sub: sid, cursor: "E.7", changes: [upd("chk", "1000.00"), upd("sav", "9250.50")], live: true });
  assert.equal(h.core.statusNow().state, "resyncing", "the live marker is held with the buffer");
  h.recv({ type: "ack", mid: 1, cursor: "E.7", result: null, duplicate: true });
  assert.equal(h.core.statusNow().state, "live");
  assert.deepEqual(shownHistory(h, "chk"), ["1000.00"]);
  assert.equal(h.outcomes[0].earlier, true, "an outcome of an earlier page load");
});

test("mids are consecutive from 1; the queue and next mid survive a reload; resend in mid order after the subscribes", () => {
  const h = new Harness();
  h.subscribe("q", ACC);
  h.start();
  h.mutate("n", { a: 1 }); h.mutate("n", { a: 2 }); h.mutate("n", { a: 3 });
  assert.deepEqual(h.store.loadSync().mutations.map((m) => m.mid).sort(), [1, 2, 3]);
  h.boot();
  h.subscribe("q", ACC);
  assert.equal(h.core.statusNow().pending, 3);
  h.start().open().welcome(0);
  const sent = h.takeSent();
  assert.deepEqual(sent.map((m) => m.type), ["hello", "subscribe", "mutate", "mutate", "mutate"]);
  assert.deepEqual(sent.slice(2).map((m) => m.mid), [1, 2, 3]);
  h.recv({ type: "ack", mid: 1, cursor: "E.1", result: null });
  h.mutate("n", { a: 4 });
  assert.equal(h.takeSent()[0].mid, 4);
});

test("at most maxInFlight mutations are unanswered at once; answers let more go", () => {
  const h = new Harness({ maxInFlight: 2 });
  h.start().open().welcome(0);
  h.takeSent();
  for (let i = 0; i < 5; i++) h.mutate("n", { i });
  assert.deepEqual(h.takeSent().map((m) => m.mid), [1, 2]);
  h.recv({ type: "ack", mid: 1, cursor: "E.1", result: null });
  assert.deepEqual(h.takeSent().map((m) => m.mid), [3]);
});

test("an ack with duplicate: true resolves the original; a second answer for a decided mid is ignored", () => {
  const h = new Harness();
  h.start().open().welcome(0);
  h.mutate("n", {});
  h.recv({ type: "ack", mid: 1, cursor: "E.1", result: { x: 1 }, duplicate: true });
  h.recv({ type: "ack", mid: 1, cursor: "E.1", result: { x: 1 }, duplicate: true });
  assert.equal(h.outcomes.length, 1);
  assert.deepEqual(h.outcomes[0].result, { x: 1 });
});

test("unavailable / rate_limited / out_of_order / internal: resend from the first undecided mid, after retry_after_ms or backoff", () => {
  for (const code of ["unavailable", "rate_limited", "out_of_order", "internal", "some_new_code"]) {
    const h = new Harness();
    h.start().open().welcome(0);
    h.takeSent();
    h.mutate("n", { a: 1 }); h.mutate("n", { a: 2 }); h.mutate("n", { a: 3 });
    h.takeSent();
    h.recv({ type: "ack", mid: 1, cursor: "E.1", result: null });
    h.recv({ type: "error", code, message: "x", ref: 2, retry_after_ms: code === "unavailable" || code === "rate_limited" ? 700 : undefined });
    h.recv({ type: "error", code, message: "x", ref: 3 });
    const waits = code === "unavailable" || code === "rate_limited";
    h.advance(waits ? 699 : 0);
    assert.deepEqual(h.takeSent(), [], code);
    h.advance(waits ? 1 : 250);
    assert.deepEqual(h.takeSent().map((m) => m.mid), [2, 3], code);
    assert.equal(h.outcomes.length, 1, code);
  }
});

test("outcome_expired rejects the promise with its own code and drops the overlay", () => {
  const { h } = liveAlice();
  h.mutate("transfer", T("chk", "bob", "1"));
  h.recv({ type: "error", code: "outcome_expired", message: "pruned", ref: 1 });
  assert.equal(h.outcomes[0].ok, false);
  assert.equal(h.outcomes[0].error.code, "outcome_expired");
  assert.equal(h.shown(ACC, "chk"), "1250.00");
  assert.equal(h.store.loadSync().mutations.length, 0);
});

test("error conflict on a mutate fails it and keeps later mids; bad_request fails it and gives later mids its number", () => {
  const h = new Harness();
  h.start().open().welcome(0);
  h.takeSent();
  h.mutate("n", { a: 1 }); h.mutate("n", { a: 2 }); h.mutate("n", { a: 3 });
  h.takeSent();
  h.recv({ type: "error", code: "conflict", message: "mid reused", ref: 1 });
  assert.equal(h.outcomes[0].error.code, "conflict");
  h.recv({ type: "error", code: "out_of_order", message: "x", ref: 2 });
  h.advance(1000);
  assert.deepEqual(h.takeSent().map((m) => [m.mid, m.args.a]), [[2, 2], [3, 3]]);
  h.recv({ type: "error", code: "bad_request", message: "args", ref: 2 });
  assert.equal(h.outcomes[1].error.code, "bad_request");
  h.advance(0);
  assert.deepEqual(h.takeSent().map((m) => [m.mid, m.args.a]), [[2, 3]]);
  assert.deepEqual(h.store.loadSync().mutations.map((m) => m.mid), [2]);
});

test("welcome.last_mid below the queue renumbers from last_mid + 1, stored before sending", () => {
  const h = new Harness({ autoPersist: false });
  h.start();
  h.commitPersists();
  h.open().welcome(0);
  h.mutate("n", { a: 1 }); h.commitPersists();
  h.recv({ type: "ack", mid: 1, cursor: "E.1", result: null });
  h.mutate("n", { a: 2 }); h.mutate("n", { a: 3 }); h.commitPersists();
  h.close(1006);
  h.advance(10_000).open();
  h.takeSent();
  h.welcome(0); // restored to before mid 1
  assert.deepEqual(h.takeSent(), [], "renumbered mids are stored first");
  h.commitPersists();
  assert.deepEqual(h.takeSent().map((m) => [m.mid, m.args.a]), [[1, 2], [2, 3]]);
  assert.deepEqual(h.store.loadSync().mutations.map((m) => m.mid).sort(), [1, 2]);
});

test("welcome.last_mid above every assigned mid stops with client_id_in_use and no reconnect", () => {
  const h = new Harness();
  h.start().open().welcome(0);
  h.mutate("n", {});
  h.close(1006);
  h.advance(10_000).open().welcome(2);
  assert.equal(h.errors.at(-1).code, "client_id_in_use");
  assert.equal(h.core.statusNow().state, "offline");
  const opens = h.opens.length;
  h.advance(120_000);
  assert.equal(h.opens.length, opens);
});

test("optimistic inserts get client-made keys; effects that move a row out of a feed's where remove it there; isPending covers them", () => {
  const NOTES = { collection: "notes", where: { user_id: "alice" } };
  const mutators = {
    add: (rows, a) => { rows.insert("notes", { user_id: "alice", body: a.body }); },
    move: (rows, a) => { rows.update("notes", { id: a.id }, { user_id: "bob" }); },
    drop: (rows, a) => { rows.delete("notes", { id: a.id }); },
  };
  const h = new Harness({ mutators });
  h.subscribe("n", NOTES);
  h.live([{ rows: [{ id: 1, user_id: "alice", body: "x" }, { id: 2, user_id: "alice", body: "y" }] }]);
  h.mutate("add", { body: "hello" });
  const v = h.view(NOTES);
  assert.ok(v.rows.has(keyString({ id: "pending:1:1" })));
  assert.ok(v.pending.has(keyString({ id: "pending:1:1" })));
  h.mutate("move", { id: 1 });
  assert.ok(!v.rows.has(keyString({ id: 1 })), "moved out of where: not shown");
  assert.ok(v.pending.has(keyString({ id: 1 })));
  h.mutate("drop", { id: 2 });
  assert.ok(!v.rows.has(keyString({ id: 2 })));
  h.recv({ type: "reject", mid: 2, code: "forbidden", message: "no" });
  assert.ok(v.rows.has(keyString({ id: 1 })), "back after the reject");
  assert.ok(!v.pending.has(keyString({ id: 1 })));
});

test("a mutator that throws is reported once and has no effect; an unknown mutator name has none", () => {
  const { h } = liveAlice({ mutators: { boom: () => { throw new Error("bad effect"); } } });
  h.mutate("boom", {});
  h.mutate("nothing", {});
  h.mutate("boom", {});
  assert.equal(h.errors.filter((e) => e.code === "mutator_failed").length, 2, "once per mutation");
  assert.equal(h.shown(ACC, "chk"), "1250.00");
});

test("effects read through earlier effects (rows.get and rows.all see the overlay so far)", () => {
  const seen = [];
  const mutators = { transfer: (rows, a) => { seen.push(String(rows.get("accounts", { id: a.from }).balance)); rows.update("accounts", { id: a.from }, (r) => ({ ...r, balance: Decimal.from(r.balance).minus(a.amount) })); }, count: (rows) => seen.push(rows.all("accounts").length) };
  const { h } = liveAlice({ mutators });
  h.mutate("transfer", T("chk", "x", "1")); seen.length = 0;
  h.mutate("transfer", T("chk", "x", "2"));
  h.mutate("count", {});
  assert.deepEqual(seen.slice(0, 2), ["1250.00", "1249.00"]);
  assert.ok(seen.includes(2));
});

test("a request re-sent by a tab after a leader handover is not queued twice (deduplicated by origin, also against the stored queue)", () => {
  const h = new Harness();
  h.start().open().welcome(0);
  h.takeSent();
  const origin = { page: "tab-b", req: 7 };
  const first = h.core.mutate("n", { a: 1 }, origin);
  h.run(first.actions);
  const again = h.core.mutate("n", { a: 1 }, origin);
  h.run(again.actions);
  assert.equal(again.id, first.id);
  assert.equal(h.core.queue.length, 1);
  assert.ok(again.actions.some((a) => a.type === "accepted" && a.origin === origin));
  h.boot(); // the old leader is gone; the new one loads the store
  const after = h.core.mutate("n", { a: 1 }, { page: "tab-b", req: 7 });
  h.run(after.actions);
  assert.equal(h.core.queue.length, 1);
  assert.equal(after.mid, 1);
  h.start().open().welcome(0);
  assert.deepEqual(h.takeSent().filter((m) => m.type === "mutate").map((m) => m.mid), [1]);
});

test("a mutation larger than the server accepts fails at once with message_too_big and uses no mid", () => {
  const h = new Harness();
  h.start().open().welcome(0);
  h.takeSent();
  const r = h.mutate("n", { blob: "x".repeat(1_048_576) });
  assert.equal(r.mid, null);
  assert.equal(h.outcomes[0].error.code, "message_too_big");
  assert.deepEqual(h.takeSent(), []);
  assert.equal(h.store.loadSync().mutations.length, 0);
  assert.equal(h.mutate("n", { small: 1 }).mid, 1);
});
