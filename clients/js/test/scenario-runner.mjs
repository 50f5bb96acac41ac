// Runs one protocol/client-scenarios/*.json file against syncline.js's pure SyncCore.
// The format is described in protocol/client-scenarios/README.md; this runner is the JS reading.

import { SyncCore, MemoryStore, Decimal, parseJSON, stringifyJSON, keyString, feedKeyOf } from "../syncline.js";

function canon(v) {
  if (Array.isArray(v)) return v.map(canon);
  if (v && typeof v === "object" && !(v instanceof Decimal)) {
    const o = {};
    for (const k of Object.keys(v).sort()) o[k] = canon(v[k]);
    return o;
  }
  return v;
}
const text = (v) => stringifyJSON(canon(v));

function b64url(s) { return Buffer.from(s).toString("base64url"); }

/** Effects written as data (see README: "mutators"), turned into a syncline.js mutator. */
function dataMutator(steps) {
  return (rows, args) => {
    const val = (v) => {
      if (v && typeof v === "object" && !(v instanceof Decimal) && !Array.isArray(v)) {
        if ("arg" in v) return args[v.arg];
        if ("neg" in v) return Decimal.from(val(v.neg)).negated();
        const o = {};
        for (const k of Object.keys(v)) o[k] = val(v[k]);
        return o;
      }
      return v;
    };
    for (const s of steps) {
      const key = s.key ? val(s.key) : undefined;
      switch (s.op) {
        case "add": rows.update(s.collection, key, (r) => ({ ...r, [s.column]: Decimal.from(r[s.column]).plus(val(s.value)) })); break;
        case "set": rows.update(s.collection, key, val(s.values)); break;
        case "insert": rows.insert(s.collection, val(s.row)); break;
        case "delete": rows.delete(s.collection, key); break;
        default: throw new Error(`unknown effect op ${s.op}`);
      }
    }
  };
}

export class ScenarioRun {
  constructor(scenario) {
    this.sc = scenario;
    this.store = new MemoryStore();
    this.clock = 1_800_000_000_000;
    this.bindings = new Map();
    this.socket = null; // {gen, open}
    this.attempt = null; // gen of a connection attempt not yet accepted/refused
    this.sentAll = [];
    this.sentUnchecked = [];
    this.tokenRequests = 0;
    this.mutators = {};
    for (const [name, steps] of Object.entries(scenario.mutators || {})) this.mutators[name] = dataMutator(steps);
    this.appQueries = []; // [{name, spec}] the app's subscriptions, re-made on reload
    this.boot();
  }

  fail(msg) { throw new Error(`${this.sc.name} step ${this.stepNo}: ${msg}`); }

  boot() {
    const c = this.sc.client || {};
    this.timers = new Map();
    this.page = { queries: new Map(), outcomes: new Map(), settled: [], errors: [], statuses: [], seen: new Map(), counts: new Map(), mids: new Map() };
    this.core = new SyncCore({
      stored: this.store.loadSync(), mutators: this.mutators, keys: c.keys,
      backoff: c.backoff ? { baseMs: c.backoff.base_ms, capMs: c.backoff.cap_ms } : undefined,
      heartbeatMs: c.heartbeat_ms || undefined, now: () => this.clock, random: () => 0.5,
    });
    this.socket = null;
    this.attempt = null;
    this.run(this.core.start());
    for (const q of this.appQueries) this.subscribe(q.name, q.spec);
  }

  token() {
    const t = this.sc.token || { sub: "alice", exp_in_s: 3600 };
    const claims = { sub: t.sub, exp: Math.floor(this.clock / 1000) + (t.exp_in_s ?? 3600) };
    return `${b64url('{"alg":"none","typ":"JWT"}')}.${b64url(JSON.stringify(claims))}.`;
  }

  run(actions) {
    const jobs = [...actions];
    const later = [];
    while (jobs.length || later.length) {
      if (!jobs.length) { jobs.push(...later.shift()()); continue; }
      const a = jobs.shift();
      switch (a.type) {
        case "send": {
          if (!this.socket || !this.socket.open) this.fail(`sent ${text(a.msg)} without an open connection`);
          const msg = parseJSON(stringifyJSON(a.msg));
          if (msg.type === "mutate") {
            const stored = this.store.loadSync().mutations.find((m) => m.mid === msg.mid);
            if (!stored || stored.name !== msg.name || text(stored.args) !== text(msg.args)) this.fail(`mutate mid ${msg.mid} sent before it was stored`);
          }
          this.sentAll.push(msg);
          this.sentUnchecked.push(msg);
          break;
        }
        case "open": this.attempt = a.gen; this.socket = null; break;
        case "closeSocket": if (this.socket && this.socket.gen === a.gen) this.socket = null; if (this.attempt === a.gen) this.attempt = null; break;
        case "setTimer": this.timers.set(a.name, this.clock + a.ms); break;
        case "clearTimer": this.timers.delete(a.name); break;
        case "fetchToken": this.tokenRequests++; later.push(() => this.core.tokenFetched(this.token())); break;
        case "persist": this.store.applySync(a.ops); later.push(() => this.core.persisted(a.ticket)); break;
        case "publish": this.publish(a); break;
        case "status": this.page.statuses.push(a.status); break;
        case "outcome": {
          const name = [...this.page.mids.entries()].find(([, id]) => id === a.id)?.[0];
          const o = a.ok ? { ok: true, result: a.result } : { ok: false, code: a.error.code };
          if (name !== undefined) this.page.outcomes.set(name, o);
          else this.page.settled.push({ mid: a.mid, ...o });
          break;
        }
        case "error": this.page.errors.push(a.error.code); break;
        case "feedError": for (const q of this.page.queries.values()) if (q.key === a.feed) q.error = a.error.code; break;
        case "message": for (const q of this.page.queries.values()) if (q.key === a.feed) q.messages.push({ topic: a.topic, payload: a.payload, cursor: a.cursor }); break;
        case "accepted": break;
        default: this.fail(`unknown action ${a.type}`);
      }
    }
  }

  publish(a) {
    for (const q of this.page.queries.values()) {
      if (q.key !== a.feed) continue;
      for (const c of a.changes) { const k = keyString(c.key); if (c.op === "delete") q.rows.delete(k); else q.rows.set(k, c.row); }
      q.pending = new Set(a.pending);
      for (const [name, w] of this.page.counts) {
        if (w.query !== q.name) continue;
        const n = this.countRows(q, w.where);
        if (w.hist[w.hist.length - 1] !== n) w.hist.push(n);
      }
      for (const [k, hist] of this.page.seen) {
        if (!k.startsWith(q.name + "\u0000")) continue;
        const [, key, column] = k.split("\u0000");
        const row = q.rows.get(key);
        const v = row ? (row[column] === undefined ? null : text(row[column])) : "absent";
        if (hist[hist.length - 1] !== v) hist.push(v);
      }
    }
  }

  countRows(q, where) {
    let n = 0;
    for (const r of q.rows.values()) if (Object.keys(where).every((k) => text(r[k]) === text(where[k]))) n++;
    return n;
  }

  subscribe(name, spec) {
    const q = { name, spec, key: feedKeyOf(spec), rows: new Map(), pending: new Set(), messages: [], error: null };
    this.page.queries.set(name, q);
    this.run(this.core.subscribe(name, spec));
    const st = this.core.feedState(q.key);
    if (st) { for (const [k, r] of st.rows) q.rows.set(k, r); q.pending = new Set(st.pending); }
  }

  bindValue(expected) { return typeof expected === "string" && expected.startsWith("$") && expected !== "$*" ? this.bindings.get(expected.slice(1)) : undefined; }

  /** Replace "$name" placeholders by their bound values (server messages). */
  subst(v) {
    if (typeof v === "string" && v.startsWith("$")) {
      if (!this.bindings.has(v.slice(1))) this.fail(`placeholder ${v} is not bound yet`);
      return this.bindings.get(v.slice(1));
    }
    if (Array.isArray(v)) return v.map((x) => this.subst(x));
    if (v && typeof v === "object" && !(v instanceof Decimal)) { const o = {}; for (const k of Object.keys(v)) o[k] = this.subst(v[k]); return o; }
    return v;
  }

  /** Does actual match expected ("$*" anything, "$name" binds once then must be equal)? */
  match(expected, actual, path = "") {
    if (typeof expected === "string" && expected.startsWith("$")) {
      if (actual === undefined) return `${path}: missing`;
      if (expected === "$*") return null;
      const name = expected.slice(1);
      if (!this.bindings.has(name)) { this.bindings.set(name, actual); return null; }
      return text(this.bindings.get(name)) === text(actual) ? null : `${path}: ${text(actual)} is not $${name} = ${text(this.bindings.get(name))}`;
    }
    if (Array.isArray(expected)) {
      if (!Array.isArray(actual) || actual.length !== expected.length) return `${path}: ${text(actual)} is not ${text(expected)}`;
      for (let i = 0; i < expected.length; i++) { const e = this.match(expected[i], actual[i], `${path}[${i}]`); if (e) return e; }
      return null;
    }
    if (expected && typeof expected === "object" && !(expected instanceof Decimal)) {
      if (!actual || typeof actual !== "object" || Array.isArray(actual)) return `${path}: ${text(actual)} is not an object`;
      const ek = Object.keys(expected).sort(), ak = Object.keys(actual).filter((k) => actual[k] !== undefined).sort();
      if (text(ek) !== text(ak)) return `${path}: fields ${ak.join(",")} are not ${ek.join(",")}`;
      for (const k of ek) { const e = this.match(expected[k], actual[k], `${path}.${k}`); if (e) return e; }
      return null;
    }
    return text(expected) === text(actual) ? null : `${path}: ${text(actual)} is not ${text(expected)}`;
  }

  advance(ms) {
    const until = this.clock + ms;
    for (;;) {
      let next = null;
      for (const [name, due] of this.timers) if (due <= until && (!next || due < next[1])) next = [name, due];
      if (!next) break;
      this.clock = Math.max(this.clock, next[1]);
      this.timers.delete(next[0]);
      this.run(this.core.timerFired(next[0]));
    }
    this.clock = until;
  }

  step(s) {
    switch (s.step) {
      case "app.subscribe": {
        const spec = { collection: s.collection, where: s.where || {} };
        this.appQueries.push({ name: s.query, spec });
        this.subscribe(s.query, spec);
        break;
      }
      case "app.subscribe_topic": this.appQueries.push({ name: s.query, spec: { topic: s.topic } }); this.subscribe(s.query, { topic: s.topic }); break;
      case "app.unsubscribe":
        this.appQueries = this.appQueries.filter((q) => q.name !== s.query);
        this.page.queries.delete(s.query);
        this.run(this.core.unsubscribe(s.query));
        break;
      case "app.mutate": {
        const r = this.core.mutate(s.name, s.args || {}, null);
        this.page.mids.set(s.mutation, r.id);
        this.page.outcomes.set(s.mutation, "pending");
        this.run(r.actions);
        break;
      }
      case "app.reload": this.boot(); break;
      case "app.online": this.run(this.core.wake()); break;
      case "server.accept":
        if (this.attempt === null) this.fail("no connection attempt to accept");
        this.socket = { gen: this.attempt, open: true };
        this.attempt = null;
        this.run(this.core.socketOpened(this.socket.gen));
        break;
      case "server.refuse": {
        if (this.attempt === null) this.fail("no connection attempt to refuse");
        const gen = this.attempt;
        this.attempt = null;
        this.run(this.core.socketClosed(gen, 1006, ""));
        break;
      }
      case "server.send":
        if (!this.socket) this.fail("server.send without an open connection");
        this.run(this.core.socketMessage(this.socket.gen, parseJSON(stringifyJSON(this.subst(s.message)))));
        break;
      case "server.close": case "server.drop": {
        if (!this.socket) this.fail(`${s.step} without an open connection`);
        const gen = this.socket.gen;
        this.socket = null;
        this.run(this.core.socketClosed(gen, s.step === "server.drop" ? 1006 : s.code, s.reason || ""));
        break;
      }
      case "time.advance": this.advance(s.ms); break;
      case "time.until_connect": {
        const max = s.max_ms ?? 60_000;
        const start = this.clock;
        while (this.attempt === null) {
          let next = null;
          for (const [name, due] of this.timers) if (!next || due < next[1]) next = [name, due];
          if (!next || next[1] - start > max) this.fail(`no connection attempt within ${max} ms`);
          this.advance(next[1] - this.clock);
        }
        if (s.at_most_ms !== undefined && this.clock - start > s.at_most_ms) this.fail(`connection attempt after ${this.clock - start} ms, more than ${s.at_most_ms}`);
        break;
      }
      case "expect.connecting": if (this.attempt === null) this.fail("expected a connection attempt"); break;
      case "expect.not_connecting": if (this.attempt !== null) this.fail("expected no connection attempt"); break;
      case "expect.sent": {
        const got = this.sentUnchecked.filter((m) => s.include_pings || m.type !== "ping");
        this.sentUnchecked = [];
        const err = this.match(s.messages, got, "sent");
        if (err) this.fail(`${err}\n  sent: ${got.map(text).join("\n        ")}`);
        break;
      }
      case "expect.state": this.expectState(s); break;
      case "expect.seen": {
        const k = `${s.query}\u0000${keyString(s.key)}\u0000${s.column}`;
        const hist = this.page.seen.get(k) || [];
        const want = s.values.map((v) => (v === "absent" ? "absent" : text(v)));
        if (text(hist) !== text(want)) this.fail(`query ${s.query} ${keyString(s.key)}.${s.column} was shown as ${hist.join(" → ")}, expected ${want.join(" → ")}`);
        this.page.seen.set(k, hist.length ? [hist[hist.length - 1]] : []);
        break;
      }
      case "watch": {
        const k = `${s.query}\u0000${keyString(s.key)}\u0000${s.column}`;
        const q = this.page.queries.get(s.query);
        const row = q && q.rows.get(keyString(s.key));
        this.page.seen.set(k, [row ? (row[s.column] === undefined ? null : text(row[s.column])) : "absent"]);
        break;
      }
      case "watch_count": {
        const q = this.page.queries.get(s.query);
        if (!q) this.fail(`no query ${s.query}`);
        this.page.counts.set(s.name, { query: s.query, where: s.where || {}, hist: [this.countRows(q, s.where || {})] });
        break;
      }
      case "expect.count_seen": {
        const w = this.page.counts.get(s.name);
        if (!w) this.fail(`no watch_count ${s.name}`);
        if (text(w.hist) !== text(s.values)) this.fail(`count ${s.name} was shown as ${w.hist.join(" → ")}, expected ${s.values.join(" → ")}`);
        w.hist = [w.hist[w.hist.length - 1]];
        break;
      }
      default: this.fail(`unknown step ${s.step}`);
    }
  }

  expectState(s) {
    const st = this.core.statusNow();
    if (s.status !== undefined && st.state !== s.status) this.fail(`status ${st.state}, expected ${s.status}`);
    if (s.pending !== undefined && st.pending !== s.pending) this.fail(`pending ${st.pending}, expected ${s.pending}`);
    if (s.token_requests !== undefined && this.tokenRequests !== s.token_requests) this.fail(`${this.tokenRequests} token requests, expected ${s.token_requests}`);
    for (const [name, want] of Object.entries(s.queries || {})) {
      const q = this.page.queries.get(name);
      if (!q) this.fail(`no query ${name}`);
      if (want.rows !== undefined) {
        const got = [...q.rows.values()].map(text).sort(), exp = want.rows.map(text).sort();
        if (text(got) !== text(exp)) this.fail(`query ${name} rows\n  got      ${got.join("\n           ")}\n  expected ${exp.join("\n           ")}`);
      }
      if (want.pending !== undefined) {
        const got = [...q.pending].sort(), exp = want.pending.map(keyString).sort();
        if (text(got) !== text(exp)) this.fail(`query ${name} pending keys ${got.join(" ")}, expected ${exp.join(" ")}`);
      }
      if (want.error !== undefined && q.error !== want.error) this.fail(`query ${name} error ${q.error}, expected ${want.error}`);
      if (want.messages !== undefined) { const e = this.match(want.messages, q.messages, `${name}.messages`); if (e) this.fail(e); }
    }
    for (const [name, want] of Object.entries(s.outcomes || {})) {
      const got = this.page.outcomes.get(name);
      const e = this.match(want, got, `outcome ${name}`);
      if (e) this.fail(e);
    }
    if (s.settled !== undefined) { const e = this.match(s.settled, this.page.settled, "settled"); if (e) this.fail(e); }
    if (s.errors !== undefined) { const e = this.match(s.errors, this.page.errors, "errors"); if (e) this.fail(e); }
  }

  runAll() {
    this.stepNo = 0;
    for (const s of this.sc.steps) { this.stepNo++; this.step(s); }
  }
}
