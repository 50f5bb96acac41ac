// Runs every protocol/client-scenarios/*.json against the pure core.
import { test } from "node:test";
import { readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { join, dirname } from "node:path";
import { parseJSON } from "../syncline.js";
import { ScenarioRun } from "./scenario-runner.mjs";

const dir = join(dirname(fileURLToPath(import.meta.url)), "../../../protocol/client-scenarios");
const files = readdirSync(dir).filter((f) => f.endsWith(".json")).sort();

test("there are scenarios", () => { if (files.length < 8) throw new Error(`only ${files.length} scenario files`); });

for (const f of files) {
  test(`scenario ${f}`, () => {
    const sc = parseJSON(readFileSync(join(dir, f), "utf8"));
    new ScenarioRun(sc).runAll();
  });
}
