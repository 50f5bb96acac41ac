// The shells around the core: connect() with a socket, a shared store, a lock manager and a
// BroadcastChannel, as two tabs of one origin. The socket is a fake (no server in unit tests); the
// channel is Node's own BroadcastChannel; the lock manager behaves like navigator.locks.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, MemoryStore, Decimal, parseJSON, stringifyJSON, SynclineError } from "../syncline.js";
import { devToken } from "./harness.mjs";

class Locks {
  constructor() { this.held = new Map(); this.waiting = new Map(); }
  request(name, opts, cb) {
    return new Promise((resolve) => {
      const go = () => {
        this.held.set(name, true);
        Promise.resolve(cb()).finally(() => {
          this.held.delete(name);
          const q = this.waiting.get(name) || [];
          const next = q.shift();
          if (next) next();
          resolve();
        });
      };
      if (!this.held.get(name)) go();
      else { const q = this.waiting.get(name) || []; q.push(go); this.waiting.set(name, q); }
    });
  }
}

class Server {
  constructor() { this.sockets = []; const server = this; this.WS = class { constructor(url, proto) { this.url = url; this.proto = proto; this.readyState = 0; this.sent = []; server.sockets.push(this); setTimeout(() => { if (this.readyState === 0) { this.readyState = 1; this.onopen && this.onopen(); } }, 0); } send(t) { this.sent.push(parseJSON(t)); } close() { this.readyState = 3; } }; }
  get last() { return this.sockets[this.sockets.length - 1]; }
  send(ws, msg) { ws.onmessage && ws.onmessage({ data: typeof msg === "string" ? msg : stringifyJSON(msg) }); }
  drop(ws, code = 1006) { ws.readyState = 3; ws.onclose && ws.onclose({ code, reason: "" }); }
}

async function until(cond, what, ms = 3000) {
  const t0 = Date.now();
  while (!cond()) { if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`); await new Promise((r) => setTimeout(r, 2)); }
}

/** Awaits `p`, failing after `ms` instead of hanging the test. */
async function within(p, what, ms = 3000) {
  let timer;
  const t = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms); });
  try { return await Promise.race([p, t]); } finally { clearTimeout(timer); }
}

/** Runs a test body and closes every client it made, also when it fails (open channels keep Node alive). */
function closing(fn) {
  return async () => {
    const made = [];
    try { await fn(made); } finally { for (const c of made) { try { c.close(); } catch { /* closed */ } } }
  };
}

const token = async () => devToken({ sub: "alice", exp: Math.floor(Date.now() / 1000) + 3600 });
const transfer = (rows, a) => { rows.update("accounts", { id: a.from }, (r) => ({ ...r, balance: Decimal.from(r.balance).minus(a.amount) })); };

function tab(server, store, locks, name = "t") {
  const c = connect({ url: "ws://127.0.0.1:1/v1/sync", getToken: token, storage: store, WebSocket: server.WS, locks, BroadcastChannel, name });
  c.mutators.transfer = transfer;
  return c;
}

test("one tab: subscribe, mutate with overlay, ack resolves, reject rejects with SynclineError, change events, ready", closing(async (made) => {
  const server = new Server();
  const c = connect({ url: "ws://127.0.0.1:1/v1/sync", getToken: token, storage: "memory", WebSocket: server.WS });
  made.push(c);
  c.mutators.transfer = transfer;
  const statuses = [];
  c.on("status", (s) => statuses.push(s.state));
  const q = c.subscribe("accounts", { owner: "alice" });
  const events = [];
  q.on("change", (ev) => events.push(ev));
  await until(() => server.last && server.last.sent.length === 1, "hello");
  const ws = server.last;
  assert.equal(ws.proto, "syncline.v1");
  assert.equal(ws.sent[0].type, "hello");
  server.send(ws, { type: "welcome", session: "s", server: "x", heartbeat_ms: 15000, last_mid: 0 });
  const sub = ws.sent[1];
  assert.equal(sub.type, "subscribe");
  server.send(ws, { type: "subscribed", id: sub.id, mode: "snapshot", cursor: "E.1" });
  server.send(ws, `{"type":"snapshot","sub":"${sub.id}","cursor":"E.1","done":true,"rows":[{"id":"chk","owner":"alice","balance":1250.00}]}`);
  server.send(ws, { type: "changes", sub: sub.id, cursor: "E.1", changes: [], live: true });
  assert.equal(await within(q.ready, "ready"), q);
  assert.equal(c.status.state, "live");
  assert.equal(c.status.leader, true);
  assert.equal(q.get({ id: "chk" }).balance.toString(), "1250.00");
  assert.equal(q.get('{"id":"chk"}').balance.toString(), "1250.00");
  const p = c.mutate("transfer", { from: "chk", to: "x", amount: new Decimal("0.50") });
  assert.equal(q.get({ id: "chk" }).balance.toString(), "1249.50");
  assert.ok(q.isPending({ id: "chk" }));
  assert.equal(c.status.pending, 1);
  await until(() => ws.sent.length === 3, "mutate");
  assert.equal(stringifyJSON(ws.sent[2].args), '{"from":"chk","to":"x","amount":0.50}');
  server.send(ws, `{"type":"changes","sub":"${sub.id}","cursor":"E.2","changes":[{"op":"update","key":{"id":"chk"},"row":{"id":"chk","owner":"alice","balance":1249.50}}]}`);
  server.send(ws, { type: "ack", mid: 1, cursor: "E.2", result: { ok: true } });
  assert.deepEqual(await within(p, "ack"), { ok: true });
  assert.equal(await within(p.mid, "mid"), 1);
  assert.ok(!q.isPending({ id: "chk" }));
  const p2 = c.mutate("transfer", { from: "chk", to: "x", amount: 5000 });
  await until(() => ws.sent.length === 4, "mutate 2");
  server.send(ws, { type: "reject", mid: 2, code: "insufficient_funds", message: "chk has insufficient funds", details: { balance: 1249.5 } });
  await assert.rejects(within(p2, "reject"), (e) => e instanceof SynclineError && e.code === "insufficient_funds" && e.message === "chk has insufficient funds" && e.details.balance === 1249.5);
  assert.equal(q.get({ id: "chk" }).balance.toString(), "1249.50");
  assert.ok(events.length >= 4);
  assert.ok(events.every((ev) => ev.rows === q.rows));
  assert.ok(statuses.includes("live"));
  q.unsubscribe();
  assert.equal(ws.sent.at(-1).type, "unsubscribe");
}));

test("two tabs: one socket; the other tab's subscribe and mutate go through the leader; when the leader closes, the other takes over the queue", closing(async (made) => {
  const server = new Server();
  const store = new MemoryStore();
  const locks = new Locks();
  const a = tab(server, store, locks);
  made.push(a);
  await until(() => a.status.leader, "tab A leads");
  const b = tab(server, store, locks);
  made.push(b);
  const settledA = [];
  a.on("settled", (e) => settledA.push(e));
  const qb = b.subscribe("accounts", { owner: "alice" });
  await until(() => server.sockets.length === 1 && server.last.sent.length >= 1, "hello");
  const ws = server.last;
  server.send(ws, { type: "welcome", session: "s", server: "x", heartbeat_ms: 15000, last_mid: 0 });
  await until(() => ws.sent.some((m) => m.type === "subscribe"), "B's subscribe sent by A");
  const sub = ws.sent.find((m) => m.type === "subscribe");
  server.send(ws, { type: "subscribed", id: sub.id, mode: "snapshot", cursor: "E.1" });
  server.send(ws, `{"type":"snapshot","sub":"${sub.id}","cursor":"E.1","done":true,"rows":[{"id":"chk","owner":"alice","balance":100.00}]}`);
  server.send(ws, { type: "changes", sub: sub.id, cursor: "E.1", changes: [], live: true });
  await within(qb.ready, "B's rows");
  assert.equal(qb.get({ id: "chk" }).balance.toString(), "100.00");
  await until(() => b.status.state === "live", "B sees live");
  assert.equal(b.status.leader, false);

  const p1 = b.mutate("transfer", { from: "chk", amount: new Decimal("1.25") });
  await until(() => ws.sent.some((m) => m.type === "mutate"), "B's mutate sent by A");
  await until(() => qb.get({ id: "chk" }).balance.toString() === "98.75", "B sees the overlay");
  assert.ok(qb.isPending({ id: "chk" }));
  server.send(ws, `{"type":"changes","sub":"${sub.id}","cursor":"E.2","changes":[{"op":"update","key":{"id":"chk"},"row":{"id":"chk","owner":"alice","balance":98.75}}]}`);
  server.send(ws, { type: "ack", mid: 1, cursor: "E.2", result: null });
  assert.equal(await within(p1, "B's ack"), null);
  assert.equal(await within(p1.mid, "B's mid from the leader"), 1);
  await until(() => settledA.length === 1, "A hears of B's outcome");
  assert.equal(settledA[0].mid, 1);

  const p2 = b.mutate("transfer", { from: "chk", amount: 10 });
  await until(() => ws.sent.filter((m) => m.type === "mutate").length === 2, "second mutate sent");
  await until(() => store.loadSync().mutations.length === 1, "queued durably");
  a.close(); // the leader's tab goes away with mid 2 unanswered
  await until(() => b.status.leader, "B takes the lock");
  await until(() => server.sockets.length === 2 && server.last.sent.length >= 1, "B connects");
  const ws2 = server.last;
  assert.equal(ws2.sent[0].client_id, ws.sent[0].client_id, "same client id");
  server.send(ws2, { type: "welcome", session: "s2", server: "x", heartbeat_ms: 15000, last_mid: 1 });
  await until(() => ws2.sent.length >= 3, "resubscribe and resend");
  assert.deepEqual(ws2.sent.slice(1).map((m) => m.type), ["subscribe", "mutate"]);
  assert.equal(ws2.sent[1].after, "E.2");
  assert.equal(ws2.sent[2].mid, 2);
  assert.equal(qb.get({ id: "chk" }).balance.toString(), "88.75", "overlay kept across the handover");
  server.send(ws2, { type: "ack", mid: 2, cursor: "E.3", result: { n: 2 } });
  assert.deepEqual(await within(p2, "the ack after the handover"), { n: 2 }, "the promise made before the handover resolves");
}));

test("logout wipes the store", closing(async (made) => {
  const server = new Server();
  const store = new MemoryStore();
  const c = connect({ url: "ws://127.0.0.1:1/v1/sync", getToken: token, storage: store, WebSocket: server.WS });
  made.push(c);
  c.mutate("x", {}).catch(() => {});
  await until(() => store.loadSync().mutations.length === 1, "stored");
  await within(c.logout(), "logout");
  assert.equal(store.loadSync().mutations.length, 0);
  assert.equal(store.loadSync().clientId, undefined);
  assert.equal(c.status.state, "offline");
}));
