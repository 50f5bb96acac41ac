// Numbers keep their digits: both JSON paths (reviver source text / own parser; rawJSON / own
// serializer) and Decimal arithmetic.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { Decimal, parseJSON, stringifyJSON, keyString, matchesWhere, SynclineError } from "../syncline.js";

const SAMPLE = '{"a":1250.00,"b":17,"c":2.5,"d":12345678901234567890,"e":-0.10,"f":[1e3,1.5E-2,0,-7],"g":"x\\u00e9\\"y","h":null,"i":true,"j":{"k":[]},"l":9007199254740993,"m":-3.50}';

function checkParsed(v) {
  assert.ok(v.a instanceof Decimal); assert.equal(v.a.toString(), "1250.00");
  assert.equal(v.b, 17); assert.equal(v.c, 2.5);
  assert.ok(v.d instanceof Decimal); assert.equal(v.d.toString(), "12345678901234567890");
  assert.equal(v.e.toString(), "-0.10");
  assert.equal(v.f[0].toString(), "1e3"); assert.equal(v.f[1].toString(), "1.5E-2"); assert.equal(v.f[2], 0); assert.equal(v.f[3], -7);
  assert.equal(v.g, 'xé"y'); assert.equal(v.h, null); assert.equal(v.i, true); assert.deepEqual(v.j, { k: [] });
  assert.equal(v.l.toString(), "9007199254740993");
  assert.equal(v.m.toString(), "-3.50");
}

test("parseJSON keeps digits (the path this process has)", () => { checkParsed(parseJSON(SAMPLE)); });

test("stringifyJSON sends Decimal digits verbatim and round-trips", () => {
  const v = parseJSON(SAMPLE);
  assert.equal(stringifyJSON(v), SAMPLE.replace('"x\\u00e9\\"y"', '"xé\\"y"'));
  assert.equal(stringifyJSON({ amount: new Decimal("100.50"), n: 1, s: "a", u: undefined, arr: [undefined, Decimal.from(2)] }), '{"amount":100.50,"n":1,"s":"a","arr":[null,2]}');
});

test("both paths, in a process with and one without --harmony-json-parse-with-source", () => {
  const file = fileURLToPath(new URL("../syncline.js", import.meta.url));
  const script = `
    const m = await import(${JSON.stringify(file)});
    const v = m.parseJSON(${JSON.stringify(SAMPLE)});
    const out = m.stringifyJSON(v);
    const native = typeof JSON.rawJSON === "function";
    console.log(JSON.stringify({ native, out, a: v.a.toString(), d: String(v.d), isDec: v.a instanceof m.Decimal }));`;
  const results = [];
  for (const flags of [["--harmony-json-parse-with-source"], []]) {
    const r = spawnSync(process.execPath, [...flags, "--input-type=module", "-e", script], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    results.push(JSON.parse(r.stdout));
  }
  assert.deepEqual(results.map((r) => r.native), [true, false], "one run per path");
  for (const r of results) {
    assert.equal(r.a, "1250.00"); assert.equal(r.d, "12345678901234567890"); assert.ok(r.isDec);
    assert.equal(r.out, SAMPLE.replace('"x\\u00e9\\"y"', '"xé\\"y"'));
  }
});

test("the fallback parser refuses bad JSON with a SyntaxError", () => {
  const file = fileURLToPath(new URL("../syncline.js", import.meta.url));
  const script = `
    const m = await import(${JSON.stringify(file)});
    const bad = ['{"a":}', '[1,]', '{"a":1', 'nul', '"x', '01', '{"a":1} x', '', '{a:1}', '"tab\\there"'];
    const out = bad.map((t) => { try { m.parseJSON(t); return "parsed " + t; } catch (e) { return e instanceof SyntaxError ? "ok" : "other " + e; } });
    console.log(JSON.stringify(out));`;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), Array(10).fill("ok"));
});

test("Decimal: exact arithmetic at the larger scale, comparison, sign, Number approximation", () => {
  const d = new Decimal("1250.00");
  assert.equal(d.minus("100.50").toString(), "1149.50");
  assert.equal(d.minus(100.5).toString(), "1149.50");
  assert.equal(d.plus(new Decimal("0.005")).toString(), "1250.005");
  assert.equal(new Decimal("0.1").plus("0.2").toString(), "0.3");
  assert.equal(new Decimal("-3.50").plus("3.50").toString(), "0.00");
  assert.equal(new Decimal("1.00").minus("2").toString(), "-1.00");
  assert.equal(new Decimal("0.05").minus("0.10").toString(), "-0.05");
  assert.equal(new Decimal("12345678901234567890").plus(1).toString(), "12345678901234567891");
  assert.equal(new Decimal("1.5").times("2.00").toString(), "3.000");
  assert.equal(new Decimal("2.50").negated().toString(), "-2.50");
  assert.equal(d.cmp("1250"), 0); assert.equal(d.cmp("1250.01"), -1); assert.equal(d.cmp(-5), 1);
  assert.ok(d.equals(1250)); assert.ok(!d.isNegative()); assert.ok(new Decimal("-0.01").isNegative()); assert.ok(!new Decimal("-0.00").isNegative());
  assert.ok(new Decimal("0.000").isZero());
  assert.equal(d.scale, 2);
  assert.equal(+d, 1250); assert.equal(d.valueOf(), 1250); assert.equal(d.toNumber(), 1250);
  assert.equal(new Decimal("1e2").plus("0.5").toString(), "100.5");
  assert.equal(Decimal.from(d), d);
  assert.equal(Decimal.from(" 7.10 ").toString(), "7.10");
  assert.equal(Decimal.from(10n).toString(), "10");
  assert.equal(Decimal.from(1e-7).toString(), "1e-7");
  assert.equal(Decimal.from(1e-7).plus(0).toString(), "0.0000001");
  assert.throws(() => Decimal.from(NaN), SynclineError);
  assert.throws(() => new Decimal("12abc"), SynclineError);
  assert.throws(() => Decimal.from({}), SynclineError);
  assert.equal(`${d}`, "1250.00");
});

test("keyString sorts field names and keeps digits; matchesWhere compares numbers by value", () => {
  assert.equal(keyString({ b: 1, a: "x" }), '{"a":"x","b":1}');
  assert.equal(keyString({ id: new Decimal("10.0") }), '{"id":10.0}');
  assert.equal(keyString('{"id":1}'), '{"id":1}');
  assert.ok(matchesWhere({ owner: "alice" }, { owner: "alice", x: 1 }));
  assert.ok(!matchesWhere({ owner: "alice" }, { owner: "bob" }));
  assert.ok(matchesWhere({ n: 5 }, { n: new Decimal("5.00") }));
  assert.ok(matchesWhere({ x: null }, { x: null }));
  assert.ok(matchesWhere({ x: null }, {}));
  assert.ok(!matchesWhere({ x: null }, { x: 0 }));
  assert.ok(matchesWhere({}, { a: 1 }));
  assert.ok(!matchesWhere({ b: true }, { b: "true" }));
});
