// Page benchmark (run by scripts/bench/web.sh, which starts arcd and seeds the SIMs): time from
// navigation start to the first rendered rows of the SIM list in headless chromium, cold cache,
// repeated; then the next page and a search; and the bytes of every asset the page loaded.
// Prints one JSON line with the figures.

import { chromium } from 'playwright-core';
import fs from 'node:fs';

const BASE = process.env.WEB_URL;
const CREDS = JSON.parse(fs.readFileSync(process.env.WEB_CREDENTIALS, 'utf8'));
const RUNS = Number(process.env.WEB_BENCH_RUNS || 7);
const CHROMIUM = process.env.WEB_CHROMIUM || '/usr/bin/chromium';

// Signs in through the API (as the page does) and returns the session the page keeps.
async function session() {
  const response = await fetch(`${BASE}/v1/auth`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ authKeyId: CREDS.authKeyId, authKey: CREDS.authKey }),
  });
  if (!response.ok) throw new Error(`auth: HTTP ${response.status}`);
  const body = await response.json();
  return { apiKey: body.apiKey, token: body.token, operatorId: body.operatorId };
}

// Runs in the page before its own scripts: records performance.now() (ms since navigation
// start) when the first SIM row is in the DOM.
function watchFirstRows(saved) {
  sessionStorage.setItem('arcd.session', saved);
  new MutationObserver((_, observer) => {
    if (document.querySelector('#sim-rows tr[data-sim-id]')) {
      window.__firstRowsAt = performance.now();
      observer.disconnect();
    }
  }).observe(document, { childList: true, subtree: true });
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
try {
  const saved = JSON.stringify(await session());
  const firstRows = [];
  let assetBytes = 0;
  let assetCount = 0;
  let rowsShown = 0;
  let nextPageMs = 0;
  let searchMs = 0;
  for (let run = 0; run < RUNS; run += 1) {
    // A new context per run: empty cache, as a first visit.
    const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    await page.addInitScript(watchFirstRows, saved);
    const assets = new Map();
    page.on('response', async (r) => {
      const url = new URL(r.url());
      if (!url.pathname.startsWith('/v1/')) {
        try { assets.set(url.pathname, (await r.body()).length); } catch { /* redirects, aborted */ }
      }
    });
    await page.goto(`${BASE}/#/sims`);
    await page.waitForFunction(() => window.__firstRowsAt !== undefined, null, { timeout: 30_000 });
    firstRows.push(await page.evaluate(() => window.__firstRowsAt));
    if (run === 0) {
      rowsShown = await page.locator('#sim-rows tr[data-sim-id]').count();
      await page.waitForLoadState('networkidle');
      assetCount = assets.size;
      assetBytes = [...assets.values()].reduce((a, b) => a + b, 0);
      const firstId = await page.getAttribute('#sim-rows tr[data-sim-id]', 'data-sim-id');
      let t = Date.now();
      await page.click('#page-next');
      await page.waitForFunction((id) => {
        const row = document.querySelector('#sim-rows tr[data-sim-id]');
        return row && row.dataset.simId !== id;
      }, firstId);
      nextPageMs = Date.now() - t;
      await page.selectOption('#search-field', 'imsi');
      await page.fill('#search-text', '4402000000001'); // 100 of the seeded IMSIs (BENCH_SIMS >= 200)
      t = Date.now();
      await page.click('#sim-search button[type="submit"]');
      await page.waitForFunction(() => /· [1-9]\d* SIMs?$/.test(document.querySelector('#page-info').textContent)
        && document.querySelector('#page-info').textContent.startsWith('Page 1'));
      searchMs = Date.now() - t;
    }
    await context.close();
  }
  console.log(JSON.stringify({
    runs: RUNS,
    firstRowsMs: firstRows.map((x) => Math.round(x)),
    firstRowsMedianMs: Math.round(median(firstRows)),
    firstRowsMaxMs: Math.round(Math.max(...firstRows)),
    rowsShown,
    nextPageMs,
    searchMs,
    assetCount,
    assetBytes,
  }));
} finally {
  await browser.close();
}
