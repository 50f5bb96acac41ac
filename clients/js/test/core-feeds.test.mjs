// Live-query application in the pure core: snapshots, changes, reset, cursors, unsubscribe.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Harness, ACC, acct } from "./harness.mjs";
import { feedKeyOf, keyString, Decimal } from "../syncline.js";

const ids = (h, spec = ACC) => [...h.view(spec).rows.values()].map((r) => r.id).sort();
const storedFeed = (h, spec = ACC) => h.store.loadSync().feeds.find((f) => f.key === feedKeyOf(spec));

test("snapshot chunks are collected and applied only on done: true, with the cursor", () => {
  const h = new Harness();
  h.subscribe("q", ACC).start().open().welcome();
  const [sub] = h.takeSent().filter((m) => m.type === "subscribe");
  assert.equal(sub.type, "subscribe");
  assert.equal(sub.after, undefined);
  h.recv({ type: "subscribed", id: sub.id, mode: "snapshot", cursor: "E.5" });
  h.recv({ type: "snapshot", sub: sub.id, cursor: "E.5", done: false, rows: [acct("a", "1.00")] });
  h.recv({ type: "snapshot", sub: sub.id, cursor: "E.5", done: false, rows: [acct("b", "2.00")] });
  assert.deepEqual(ids(h), []);
  assert.equal(storedFeed(h), undefined, "no cursor saved before done");
  h.recv({ type: "snapshot", sub: sub.id, cursor: "E.5", done: true, rows: [acct("c", "3.00")] });
  assert.deepEqual(ids(h), ["a", "b", "c"]);
  assert.equal(h.view(ACC).publishes, 1, "all chunks published at once");
  assert.equal(storedFeed(h).cursor, "E.5");
  assert.equal(storedFeed(h).rows.length, 3);
});

test("changes: insert, update, delete; a row leaving the filter arrives as delete; empty changes move the cursor", () => {
  const h = new Harness();
  h.subscribe("q", ACC);
  const [id] = h.live([{ rows: [acct("a", "1.00"), acct("b", "2.00")] }]);
  h.recv({ type: "changes", sub: id, cursor: "E.7", changes: [
    { op: "insert", key: { id: "c" }, row: acct("c", "3.00") },
    { op: "update", key: { id: "a" }, row: acct("a", "1.50") },
    { op: "delete", key: { id: "b" }, row: null },
    { op: "delete", key: { id: "zz" }, row: null },
  ] });
  assert.deepEqual(ids(h), ["a", "c"]);
  assert.equal(h.shown(ACC, "a"), "1.50");
  assert.equal(storedFeed(h).cursor, "E.7");
  assert.deepEqual(storedFeed(h).rows.map(([k]) => k).sort(), [keyString({ id: "a" }), keyString({ id: "c" })]);
  const before = h.view(ACC).publishes;
  h.recv({ type: "changes", sub: id, cursor: "E.9", changes: [] });
  assert.equal(h.view(ACC).publishes, before, "an empty changes publishes nothing");
  assert.equal(storedFeed(h).cursor, "E.9");
  h.recv({ type: "changes", sub: id, cursor: "E.10", changes: [{ op: "frobnicate", key: { id: "a" }, row: null }] });
  assert.deepEqual(ids(h), ["a", "c"], "unknown ops are ignored");
});

test("a live feed restarted with mode reset keeps its rows until the new snapshot is done, then replaces them at once", () => {
  const h = new Harness();
  h.subscribe("q", ACC);
  const [id] = h.live([{ rows: [acct("a", "1.00"), acct("b", "2.00")] }]);
  h.recv({ type: "subscribed", id, mode: "reset", cursor: "E.50" });
  h.recv({ type: "snapshot", sub: id, cursor: "E.50", done: false, rows: [acct("x", "9.00")] });
  assert.deepEqual(ids(h), ["a", "b"]);
  assert.equal(h.core.statusNow().state, "resyncing");
  h.recv({ type: "changes", sub: id, cursor: "E.51", changes: [{ op: "delete", key: { id: "a" }, row: null }] }); // ignored mid-snapshot
  const n = h.view(ACC).publishes;
  h.recv({ type: "snapshot", sub: id, cursor: "E.50", done: true, rows: [acct("y", "8.00")] });
  assert.equal(h.view(ACC).publishes, n + 1);
  assert.deepEqual(ids(h), ["x", "y"]);
  assert.equal(storedFeed(h).cursor, "E.50");
  assert.deepEqual(storedFeed(h).rows.map(([, r]) => r.id).sort(), ["x", "y"], "the store holds only the new rows");
  h.recv({ type: "changes", sub: id, cursor: "E.52", changes: [], live: true });
  assert.equal(h.core.statusNow().state, "live");
});

test("a snapshot interrupted by a disconnect is discarded; the resubscribe uses the last complete cursor", () => {
  const h = new Harness();
  h.subscribe("q", ACC);
  const [id] = h.live([{ rows: [acct("a", "1.00")] }]);
  h.recv({ type: "subscribed", id, mode: "reset", cursor: "E.50" });
  h.recv({ type: "snapshot", sub: id, cursor: "E.50", done: false, rows: [acct("x", "9.00")] });
  h.close(1006);
  h.advance(10_000).open().welcome();
  const [sub] = h.takeSent().filter((m) => m.type === "subscribe");
  assert.equal(sub.after, "E.1");
  assert.notEqual(sub.id, id, "a fresh id per subscribe on a connection");
  assert.deepEqual(ids(h), ["a"]);
});

test("rows keep their digits through the store: 1250.00 stays 1250.00, big integers stay exact", () => {
  const h = new Harness();
  h.subscribe("q", ACC).start().open().welcome();
  const [sub] = h.takeSent().filter((m) => m.type === "subscribe");
  h.recv(`{"type":"subscribed","id":"${sub.id}","mode":"snapshot","cursor":"E.1"}`);
  h.recv(`{"type":"snapshot","sub":"${sub.id}","cursor":"E.1","done":true,"rows":[{"id":"a","owner":"alice","balance":1250.00,"n":12345678901234567890,"v":17}]}`);
  const row = h.view(ACC).rows.get(keyString({ id: "a" }));
  assert.ok(row.balance instanceof Decimal);
  assert.equal(row.balance.toString(), "1250.00");
  assert.equal(row.n.toString(), "12345678901234567890");
  assert.equal(row.v, 17);
  h.boot();
  h.subscribe("q", ACC);
  const again = h.view(ACC).rows.get(keyString({ id: "a" }));
  assert.equal(again.balance.toString(), "1250.00");
  assert.equal(again.n.toString(), "12345678901234567890");
});

test("unsubscribe sends unsubscribe once no holder is left, ignores the feed's later messages and drops it from the store", () => {
  const h = new Harness();
  h.subscribe("q1", ACC).subscribe("q2", ACC);
  const [id] = h.live([{ rows: [acct("a", "1.00")] }]);
  h.run(h.core.unsubscribe("q1"));
  assert.deepEqual(h.takeSent(), []);
  h.run(h.core.unsubscribe("q2"));
  assert.deepEqual(h.takeSent(), [{ type: "unsubscribe", id }]);
  assert.equal(storedFeed(h), undefined);
  const n = h.view(ACC).publishes;
  h.recv({ type: "changes", sub: id, cursor: "E.3", changes: [{ op: "delete", key: { id: "a" }, row: null }] });
  assert.equal(h.view(ACC).publishes, n);
});

test("two queries with the same collection and where share one server feed", () => {
  const h = new Harness();
  h.subscribe("q1", ACC).subscribe("q2", { collection: "accounts", where: { owner: "alice" } });
  h.start().open().welcome();
  assert.equal(h.takeSent().filter((m) => m.type === "subscribe").length, 1);
});

test("key columns are learned from changes and the rows re-keyed", () => {
  const spec = { collection: "lines", where: {} };
  const h = new Harness();
  h.subscribe("q", spec);
  const [id] = h.live([{ rows: [{ order: 1, line: 1, qty: 2 }, { order: 1, line: 2, qty: 5 }] }]);
  h.recv({ type: "changes", sub: id, cursor: "E.2", changes: [{ op: "update", key: { order: 1, line: 2 }, row: { order: 1, line: 2, qty: 6 } }] });
  const v = h.view(spec);
  assert.equal(v.rows.size, 2);
  assert.equal(v.rows.get(keyString({ line: 2, order: 1 })).qty, 6);
});

test("topics: messages are handed up with their cursor, which is saved and used to resume", () => {
  const h = new Harness();
  const spec = { topic: "user:alice" };
  h.subscribe("t", spec).start().open().welcome();
  const [sub] = h.takeSent().filter((m) => m.type === "subscribe");
  assert.deepEqual(sub, { type: "subscribe", id: sub.id, topic: "user:alice" });
  h.recv({ type: "subscribed", id: sub.id, mode: "snapshot", cursor: "E.1" });
  h.recv({ type: "snapshot", sub: sub.id, cursor: "E.1", done: true, rows: [] });
  h.recv({ type: "changes", sub: sub.id, cursor: "E.1", changes: [], live: true });
  h.recv(`{"type":"message","sub":"${sub.id}","cursor":"E.4","topic":"user:alice","payload":{"amount":96.40}}`);
  assert.equal(h.messages.length, 1);
  assert.equal(h.messages[0].payload.amount.toString(), "96.40");
  assert.equal(storedFeed(h, spec).cursor, "E.4");
  h.boot();
  h.subscribe("t", spec).start().open().welcome();
  assert.equal(h.takeSent().find((m) => m.type === "subscribe").after, "E.4");
});

test("a tab going away deactivates its feeds but keeps them stored; its reload resumes warm, also offline", () => {
  const h = new Harness();
  h.subscribe("tabB:q1", ACC);
  const [id] = h.live([{ rows: [acct("a", "1.00")] }]);
  h.recv({ type: "changes", sub: id, cursor: "E.4", changes: [{ op: "insert", key: { id: "b" }, row: acct("b", "2.00") }] });
  h.run(h.core.unsubscribePrefix("tabB:"));
  assert.deepEqual(h.takeSent(), [{ type: "unsubscribe", id }]);
  assert.equal(storedFeed(h).cursor, "E.4", "still stored");
  h.subscribe("tabB2:q1", ACC); // the reloaded tab, same leader
  assert.deepEqual(ids(h), ["a", "b"]);
  assert.equal(h.takeSent()[0].after, "E.4");
  h.close(1006);
  h.run(h.core.unsubscribePrefix("tabB2:"));
  h.boot(); // and after the leader's reload too
  h.subscribe("tabB3:q1", ACC);
  assert.deepEqual(ids(h), ["a", "b"]);
});

test("conflate: true is sent on subscribe, is a feed of its own, and a merged stream (delete+insert as update) applies by key", () => {
  const CONF = { ...ACC, conflate: true };
  assert.notEqual(feedKeyOf(CONF), feedKeyOf(ACC));
  const h = new Harness();
  h.subscribe("exact", ACC);
  h.subscribe("merged", CONF);
  const [exactID, mergedID] = h.live([{ rows: [acct("a", "1.00"), acct("b", "2.00")] }, { rows: [acct("a", "1.00"), acct("b", "2.00")] }]);
  h.recv({ type: "changes", sub: exactID, cursor: "E.7", changes: [
    { op: "delete", key: { id: "a" }, row: null },
    { op: "insert", key: { id: "c" }, row: acct("c", "3.00") },
    { op: "insert", key: { id: "a" }, row: acct("a", "1.25") },
    { op: "update", key: { id: "c" }, row: acct("c", "3.50") },
    { op: "update", key: { id: "b" }, row: acct("b", "2.10") },
    { op: "delete", key: { id: "b" }, row: null },
  ] });
  // The same history as the server merges it for a conflating feed (protocol §3.8).
  h.recv({ type: "changes", sub: mergedID, cursor: "E.7", changes: [
    { op: "update", key: { id: "a" }, row: acct("a", "1.25") },
    { op: "insert", key: { id: "c" }, row: acct("c", "3.50") },
    { op: "delete", key: { id: "b" }, row: null },
  ] });
  assert.deepEqual(ids(h, CONF), ids(h, ACC));
  assert.deepEqual(ids(h, CONF), ["a", "c"]);
  assert.equal(h.shown(CONF, "a"), "1.25");
  assert.equal(h.shown(CONF, "c"), "3.50");
  assert.equal(storedFeed(h, CONF).cursor, storedFeed(h, ACC).cursor);

  const w = new Harness();
  w.subscribe("exact", ACC).subscribe("merged", CONF);
  w.start().open().welcome();
  const sent = w.takeSent().filter((m) => m.type === "subscribe");
  assert.equal(sent.length, 2);
  assert.equal(sent.filter((m) => m.conflate === true).length, 1);
  assert.equal(sent.filter((m) => "conflate" in m).length, 1, "an exact feed sends no conflate field");
});
