// A driver for SyncCore in unit tests: a fake clock and timers, a MemoryStore that commits at
// once (or on demand), the messages sent, and the app's view of every feed.
import { SyncCore, MemoryStore, Decimal, keyString, feedKeyOf, parseJSON, stringifyJSON } from "../syncline.js";

export const b64url = (s) => Buffer.from(s).toString("base64url");
export function devToken(claims) { return `${b64url('{"alg":"none","typ":"JWT"}')}.${b64url(JSON.stringify(claims))}.`; }

export const transfer = (rows, a) => {
  rows.update("accounts", { id: a.from }, (r) => ({ ...r, balance: Decimal.from(r.balance).minus(a.amount) }));
  rows.update("accounts", { id: a.to }, (r) => ({ ...r, balance: Decimal.from(r.balance).plus(a.amount) }));
};

export class Harness {
  constructor(o = {}) {
    this.store = o.store || new MemoryStore();
    this.clock = 1_800_000_000_000;
    this.o = o;
    this.autoPersist = o.autoPersist !== false;
    this.boot();
  }
  boot() {
    this.timers = new Map();
    this.sent = [];
    this.views = new Map(); // feed key -> {rows: Map, pending: Set, publishes: n, history: []}
    this.outcomes = [];
    this.errors = [];
    this.feedErrors = [];
    this.statuses = [];
    this.messages = [];
    this.persists = [];
    this.opens = [];
    this.closes = [];
    this.tokenRequests = 0;
    this.gen = null;
    this.core = new SyncCore({
      stored: this.store.loadSync(), mutators: this.o.mutators || { transfer }, keys: this.o.keys,
      backoff: this.o.backoff, heartbeatMs: this.o.heartbeatMs, now: () => this.clock,
      random: this.o.random || (() => 0.5), maxInFlight: this.o.maxInFlight,
    });
  }
  token(exp_in_s = 3600, sub = "alice") { return devToken({ sub, exp: Math.floor(this.clock / 1000) + exp_in_s }); }
  run(actions) {
    const later = [];
    for (const a of actions) {
      switch (a.type) {
        case "send": this.sent.push(parseJSON(stringifyJSON(a.msg))); break;
        case "open": this.gen = a.gen; this.opens.push(a.gen); break;
        case "closeSocket": this.closes.push(a); break;
        case "setTimer": this.timers.set(a.name, this.clock + a.ms); break;
        case "clearTimer": this.timers.delete(a.name); break;
        case "fetchToken": this.tokenRequests++; if (this.o.tokenFails) later.push(() => this.core.tokenFailed(new Error("offline"))); else later.push(() => this.core.tokenFetched(this.token())); break;
        case "persist": this.persists.push(a); if (this.autoPersist) { this.store.applySync(a.ops); later.push(() => this.core.persisted(a.ticket)); } break;
        case "publish": this.publish(a); break;
        case "outcome": this.outcomes.push(a); break;
        case "error": this.errors.push(a.error); break;
        case "feedError": this.feedErrors.push(a); break;
        case "status": this.statuses.push(a.status); break;
        case "message": this.messages.push(a); break;
        case "accepted": break;
        default: throw new Error("unknown action " + a.type);
      }
    }
    for (const f of later) this.run(f());
    return this;
  }
  /** Commit the store writes held back (autoPersist: false). */
  commitPersists() {
    const p = this.persists.splice(0);
    for (const a of p) { this.store.applySync(a.ops); this.run(this.core.persisted(a.ticket)); }
  }
  publish(a) {
    let v = this.views.get(a.feed);
    if (!v) { v = { rows: new Map(), pending: new Set(), publishes: 0, history: [] }; this.views.set(a.feed, v); }
    for (const c of a.changes) { const k = keyString(c.key); if (c.op === "delete") v.rows.delete(k); else v.rows.set(k, c.row); }
    v.pending = new Set(a.pending);
    v.publishes++;
    v.history.push(new Map(v.rows));
  }
  view(spec) { return this.views.get(feedKeyOf(spec)) || { rows: new Map(), pending: new Set(), publishes: 0, history: [] }; }
  /** The value shown for key.column in a feed, as text. */
  shown(spec, id, column = "balance") { const r = this.view(spec).rows.get(keyString({ id })); return r ? String(r[column]) : undefined; }
  start() { return this.run(this.core.start(this.token())); }
  open() { return this.run(this.core.socketOpened(this.gen)); }
  recv(msg) { return this.run(this.core.socketMessage(this.gen, parseJSON(typeof msg === "string" ? msg : stringifyJSON(msg)))); }
  close(code, reason = "") { return this.run(this.core.socketClosed(this.gen, code, reason)); }
  welcome(last_mid = 0, heartbeat_ms = 15000) { return this.recv({ type: "welcome", session: "s", server: "syncline/0.1.0", heartbeat_ms, last_mid }); }
  subscribe(holder, spec) { return this.run(this.core.subscribe(holder, spec)); }
  mutate(name, args) { const r = this.core.mutate(name, args, null); this.run(r.actions); return r; }
  takeSent() { const s = this.sent; this.sent = []; return s; }
  advance(ms) {
    const until = this.clock + ms;
    for (;;) {
      let next = null;
      for (const [n, due] of this.timers) if (due <= until && (!next || due < next[1])) next = [n, due];
      if (!next) break;
      this.clock = Math.max(this.clock, next[1]);
      this.timers.delete(next[0]);
      this.run(this.core.timerFired(next[0]));
    }
    this.clock = until;
    return this;
  }
  /** Connect, welcome, and bring `specs` live with the given snapshot rows. */
  live(feeds, last_mid = 0) {
    this.start().open().welcome(last_mid);
    const subs = this.takeSent().filter((m) => m.type === "subscribe");
    subs.forEach((m, i) => {
      const rows = feeds[i].rows || [];
      this.recv({ type: "subscribed", id: m.id, mode: "snapshot", cursor: "E.1" });
      this.recv({ type: "snapshot", sub: m.id, cursor: "E.1", done: true, rows });
      this.recv({ type: "changes", sub: m.id, cursor: "E.1", changes: [], live: true });
    });
    return subs.map((m) => m.id);
  }
}

export const ACC = { collection: "accounts", where: { owner: "alice" } };
export const acct = (id, balance, extra = {}) => ({ id, owner: "alice", balance: new Decimal(balance), ...extra });
