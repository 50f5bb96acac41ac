// Connection rules of the pure core: close codes, backoff with full jitter, tokens, heartbeat, status.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Harness, ACC, acct, devToken } from "./harness.mjs";
import { backoffDelay, tokenRefreshDelay, decodeToken } from "../syncline.js";

test("backoff: full jitter in [0, min(cap, base·2^attempt)), capped", () => {
  const o = { baseMs: 250, capMs: 10_000 };
  assert.equal(backoffDelay(0, o, () => 0), 0);
  assert.equal(backoffDelay(0, o, () => 0.999999), 249);
  assert.equal(backoffDelay(3, o, () => 0.999999), 1999);
  assert.equal(backoffDelay(10, o, () => 0.999999), 9999);
  assert.equal(backoffDelay(1000, o, () => 0.999999), 9999, "huge attempts stay capped");
  for (let attempt = 0; attempt < 12; attempt++) {
    const ceiling = Math.min(10_000, 250 * 2 ** attempt);
    let min = Infinity, max = -Infinity;
    for (let i = 0; i < 2000; i++) { const d = backoffDelay(attempt, o); min = Math.min(min, d); max = Math.max(max, d); assert.ok(d >= 0 && d < ceiling, `${d} for attempt ${attempt}`); }
    assert.ok(max > ceiling * 0.8 && min < ceiling * 0.2, `spread over the whole range at attempt ${attempt}: ${min}..${max}`);
  }
  assert.equal(backoffDelay(2, undefined, () => 0.5), 500, "defaults 250 ms / 10 s");
});

test("token refresh: 30 s or 10% of the remaining life before exp, whichever is less", () => {
  const now = 1_000_000;
  assert.equal(tokenRefreshDelay(now + 3_600_000, now), 3_570_000);
  assert.equal(tokenRefreshDelay(now + 60_000, now), 54_000);
  assert.equal(tokenRefreshDelay(now - 1, now), 0);
  assert.deepEqual(decodeToken(devToken({ sub: "alice", exp: 5 })), { sub: "alice", exp: 5 });
  assert.equal(decodeToken("garbage"), null);
});

/** Reconnect behaviour after `code`: {delay (ms until the next attempt) | null, errors, tokenRequests}. */
function afterClose(code, { attempts = 0 } = {}) {
  const h = new Harness({ random: () => 0.999 });
  h.subscribe("q", ACC);
  h.live([{ rows: [acct("a", "1.00")] }]);
  for (let i = 0; i < attempts; i++) { h.close(1006); h.advance(60_000).open(); h.takeSent(); }
  const opens = h.opens.length, tokens = h.tokenRequests;
  h.close(code, "why");
  let delay = null;
  for (let t = 0; t <= 30_000; t += 1) { h.advance(t === 0 ? 0 : 1); if (h.opens.length > opens) { delay = t; break; } }
  return { h, delay, errors: h.errors.map((e) => e.code), tokenRequests: h.tokenRequests - tokens };
}

test("close codes: 1001 and 4008 resume at once; 1000/1006/1011/1013 back off; 4001 fetches a token first", () => {
  for (const code of [1001, 4008]) { const r = afterClose(code); assert.equal(r.delay, 0, `${code}`); assert.deepEqual(r.errors, []); }
  for (const code of [1000, 1006, 1011, 1013, 4999]) {
    const r = afterClose(code);
    assert.ok(r.delay > 0 && r.delay < 250, `${code}: ${r.delay}`);
    assert.deepEqual(r.errors, [], `${code}`);
    const later = afterClose(code, { attempts: 3 });
    assert.ok(later.delay >= 1000 && later.delay < 2000 + 1, `${code} after 3 failures: ${later.delay}`);
  }
  const r = afterClose(4001);
  assert.equal(r.delay, 0);
  assert.equal(r.tokenRequests, 1);
});

test("close codes: 1008, 1009 and 4400 report an error and wait at least the cap; 4003 stops", () => {
  for (const [code, err] of [[1008, "policy_violation"], [1009, "message_too_big"], [4400, "protocol_violation"]]) {
    const r = afterClose(code);
    assert.deepEqual(r.errors, [err], `${code}`);
    assert.ok(r.delay >= 10_000, `${code}: ${r.delay}`);
  }
  const r = afterClose(4003);
  assert.deepEqual(r.errors, ["forbidden"]);
  assert.equal(r.delay, null);
  assert.equal(r.h.core.statusNow().state, "offline");
});

test("a connection attempt that fails before open backs off, growing; the browser's online event skips the wait", () => {
  const h = new Harness({ random: () => 0.999 });
  h.start();
  const waits = [];
  for (let i = 0; i < 6; i++) {
    const n = h.opens.length;
    h.close(1006);
    let t = 0;
    h.advance(0);
    while (h.opens.length === n) { h.advance(1); t++; }
    waits.push(t);
  }
  assert.deepEqual(waits, [249, 499, 999, 1998, 3996, 7992]); // floor(0.999 · 250 · 2^n)
  const n = h.opens.length;
  h.close(1006);
  h.run(h.core.wake());
  assert.equal(h.opens.length, n + 1);
});

test("status: connecting, then resyncing until every feed's live marker, then live; offline when the connection is lost; pending counts undecided mutations", () => {
  const h = new Harness();
  h.subscribe("q", ACC).subscribe("t", { topic: "user:alice" });
  assert.equal(h.core.statusNow().state, "connecting");
  h.start().open();
  assert.equal(h.core.statusNow().state, "connecting");
  h.welcome();
  assert.equal(h.core.statusNow().state, "resyncing");
  const [a, t] = h.takeSent().filter((m) => m.type === "subscribe").map((m) => m.id);
  h.recv({ type: "subscribed", id: a, mode: "snapshot", cursor: "E.1" });
  h.recv({ type: "snapshot", sub: a, cursor: "E.1", done: true, rows: [] });
  h.recv({ type: "changes", sub: a, cursor: "E.1", changes: [], live: true });
  assert.equal(h.core.statusNow().state, "resyncing");
  h.recv({ type: "subscribed", id: t, mode: "snapshot", cursor: "E.1" });
  h.recv({ type: "snapshot", sub: t, cursor: "E.1", done: true, rows: [] });
  h.recv({ type: "changes", sub: t, cursor: "E.1", changes: [], live: true });
  assert.equal(h.core.statusNow().state, "live");
  h.mutate("n", {});
  assert.deepEqual(h.core.statusNow(), { state: "live", pending: 1 });
  h.close(1006);
  assert.deepEqual(h.core.statusNow(), { state: "offline", pending: 1 });
  assert.deepEqual(h.statuses.map((s) => s.state).filter((s, i, a) => s !== a[i - 1]), ["connecting", "resyncing", "live", "offline"]);
});

test("getToken failing at start: offline, retried with backoff; an expired token from getToken does not spin", () => {
  const h = new Harness({ tokenFails: true });
  h.run(h.core.start());
  assert.equal(h.core.statusNow().state, "offline");
  assert.equal(h.tokenRequests, 1);
  h.advance(200);
  assert.equal(h.tokenRequests, 2);
  h.o.tokenFails = false;
  const g = new Harness();
  g.token = () => devToken({ sub: "alice", exp: Math.floor(g.clock / 1000) - 10 });
  g.run(g.core.start());
  assert.ok(g.tokenRequests <= 2, `${g.tokenRequests} token requests`);
  assert.equal(g.opens.length, 1, "connects with what it got; the server decides (4001)");
  g.advance(1000);
  assert.ok(g.tokenRequests <= 3, `${g.tokenRequests} token requests after 1 s`);
});

test("errors without a ref are reported; unknown message types are ignored", () => {
  const h = new Harness();
  h.start().open().welcome();
  h.recv({ type: "error", code: "bad_request", message: "message is not valid JSON" });
  h.recv({ type: "hologram", x: 1 });
  assert.deepEqual(h.errors.map((e) => e.code), ["bad_request"]);
});

test("feed errors: duplicate_id and internal resubscribe (backoff); not_found ends the feed with an error on the query", () => {
  const h = new Harness();
  h.subscribe("q", ACC).subscribe("x", { collection: "nope", where: {} }).start().open().welcome();
  const [a, x] = h.takeSent().filter((m) => m.type === "subscribe").map((m) => m.id);
  h.recv({ type: "error", code: "not_found", message: "unknown collection", ref: x });
  assert.equal(h.feedErrors.length, 1);
  assert.equal(h.feedErrors[0].error.code, "not_found");
  h.recv({ type: "error", code: "duplicate_id", message: "dup", ref: a });
  h.advance(1000);
  const [again] = h.takeSent();
  assert.equal(again.type, "subscribe");
  assert.notEqual(again.id, a);
  h.recv({ type: "error", code: "internal", message: "bug", ref: again.id });
  h.advance(1000);
  assert.equal(h.takeSent()[0].type, "subscribe");
  h.advance(60_000);
  assert.deepEqual(h.takeSent().filter((m) => m.type !== "ping"), [], "no loop");
});

test("no welcome within the wait: the socket is given up and retried", () => {
  const h = new Harness();
  h.start().open();
  const n = h.opens.length;
  h.advance(31_000);
  assert.ok(h.opens.length > n);
  assert.equal(h.closes.length, 1);
});

test("4001 after a long outage (a restarted server with new keys) reconnects at once with a fresh token; a repeated 4001 backs off", () => {
  const h = new Harness({ random: () => 0.999 });
  h.subscribe("q", ACC);
  h.live([{ rows: [acct("a", "1.00")] }]);
  h.close(1006);
  for (let i = 0; i < 8; i++) { h.advance(20_000); h.close(1006); } // the server is down: attempts pile up
  h.advance(20_000).open();
  const tokens = h.tokenRequests, opens = h.opens.length;
  h.close(4001, "token signature invalid");
  h.advance(0);
  assert.equal(h.tokenRequests, tokens + 1);
  assert.equal(h.opens.length, opens + 1, "reconnected at once");
  h.open();
  h.close(4001, "still invalid");
  h.advance(0);
  assert.equal(h.opens.length, opens + 1, "a second 4001 in a row waits");
  h.advance(10_000);
  assert.equal(h.opens.length, opens + 2);
  h.open().welcome();
  h.close(4001, "expired later");
  h.advance(0);
  assert.equal(h.opens.length, opens + 3, "after a welcome, the first 4001 is at once again");
});
