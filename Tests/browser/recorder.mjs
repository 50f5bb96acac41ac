// The in-page recorder: installed with Page.addScriptToEvaluateOnNewDocument, so it runs before
// the dashboard's own scripts on every load. A MutationObserver on the whole document records, at
// every microtask checkpoint where the DOM changed (a superset of what reaches the screen):
// - every distinct value each account's `.balance` takes, and whether it was marked pending;
// - the first moment each transaction memo appears as a confirmed row, the largest number of rows
//   ever shown at once per memo (an effect counted twice shows up here), and pending rows;
// - every `#status` value and every outcome state per memo (memos look like `bt-…`), with wall-clock times
//   (performance.timeOrigin + performance.now(), comparable with Date.now() in the test).
export const recorderSource = String.raw`(() => {
  if (window.__rec) return;
  const now = () => performance.timeOrigin + performance.now();
  const rec = window.__rec = {
    balances: {},        // account id -> [{text, pending, t}]
    memoFirstSeen: {},   // memo -> t (first confirmed row with this memo)
    memoFirstFrame: {},  // memo -> t of the first animation frame after it appeared
    memoMaxRows: {},     // memo -> most rows with this memo at one checkpoint
    memoPendingSeen: {}, // memo -> t (first optimistic row)
    status: [],          // [{state, t}]
    outcomes: {},        // memo -> [{outcome, text, t}]
    checkpoints: 0,
  };
  const lastBalance = {};
  let lastStatus = null;
  const lastOutcome = {};
  const scan = () => {
    rec.checkpoints++;
    const t = now();
    const status = document.getElementById("status");
    if (status && status.textContent.trim() !== lastStatus) {
      lastStatus = status.textContent.trim();
      rec.status.push({ state: lastStatus, t });
    }
    for (const el of document.querySelectorAll("[data-account]")) {
      const id = el.getAttribute("data-account");
      const cell = el.querySelector(".balance");
      if (!cell) continue;
      const text = cell.textContent.trim();
      const pending = el.getAttribute("data-pending") === "true";
      const key = text + "|" + pending;
      if (lastBalance[id] !== key) {
        lastBalance[id] = key;
        (rec.balances[id] ??= []).push({ text, pending, t });
      }
    }
    const counts = {};
    for (const tr of document.querySelectorAll("#transactions tr[data-key]")) {
      const memo = tr.querySelector(".memo")?.textContent.trim();
      if (!memo) continue;
      counts[memo] = (counts[memo] ?? 0) + 1;
      if (tr.getAttribute("data-pending") === "true") {
        rec.memoPendingSeen[memo] ??= t;
      } else if (rec.memoFirstSeen[memo] === undefined) {
        rec.memoFirstSeen[memo] = t;
        requestAnimationFrame(() => { rec.memoFirstFrame[memo] = now(); });
      }
    }
    for (const [memo, n] of Object.entries(counts)) {
      if ((rec.memoMaxRows[memo] ?? 0) < n) rec.memoMaxRows[memo] = n;
    }
    for (const li of document.querySelectorAll("#outcomes li[data-outcome]")) {
      const outcome = li.getAttribute("data-outcome");
      const text = li.textContent.trim();
      const key = li.getAttribute("data-mid") + "|" + text;
      if (lastOutcome[key] === outcome) continue;
      lastOutcome[key] = outcome;
      const memo = (text.match(/\bbt-[\w-]+/) || [text])[0];
      (rec.outcomes[memo] ??= []).push({ outcome, text, mid: li.getAttribute("data-mid"), t });
    }
  };
  new MutationObserver(scan).observe(document, {
    subtree: true, childList: true, characterData: true, attributes: true,
  });
})();`;
