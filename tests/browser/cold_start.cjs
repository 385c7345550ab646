// Scale to zero in the Deployments view. The test (tests/ui_browser.rs) creates `cold` (the
// echo server, autoscaled 0–1, to zero after 2 s without a request, each replica slow to start:
// ECHO_STARTUP_DELAY_MS) and waits until it is at zero. The card reads "scaled to zero", calmly,
// not as a failure; the scenario then writes `at-zero` into SKYLAUNCH_UI_SIGNALS and the test
// sends two chat requests, which wait for a cold start. The card shows "Cold start in progress:
// 2 requests waiting" while the replica starts, then the deployment serving its one ready
// replica. What the page showed goes back to the test as `cold-start` (JSON).
'use strict';
const fs = require('fs');
const path = require('path');
const { open, signIn, check, main } = require('./lib.cjs');

main(async () => {
  const ui = await open();
  const { page } = ui;
  const signals = process.env.SKYLAUNCH_UI_SIGNALS;
  check(signals, 'SKYLAUNCH_UI_SIGNALS is set (tests/ui_browser.rs sets it)');
  const signal = (name, what) => fs.writeFileSync(path.join(signals, name), JSON.stringify(what));
  // The card, read in one go (a refresh may replace it between two reads).
  const readCard = () => page.evaluate(() => {
    const c = document.querySelector('[data-deployment="cold"]');
    if (!c) return null;
    const text = sel => c.querySelector(sel)?.textContent ?? null;
    return {
      zero: c.dataset.zero ?? null, waiting: c.dataset.waiting == null ? null : Number(c.dataset.waiting),
      ready: Number(c.dataset.ready), desired: Number(c.dataset.desired), status: c.dataset.status,
      badge: text('.deployment-head .badge'), badgeClass: c.querySelector('.deployment-head .badge')?.className ?? null,
      reason: text('.deployment-head .reason'), scaledToZero: text('.scaled-to-zero'), coldStart: text('.cold-start'),
      coldStartFirst: c.querySelector('.cold-start') != null && c.querySelector('.cold-start') === c.querySelector('.deployment-head').nextElementSibling,
      band: text('.autoscale .band'),
      routing: text('.fact-routing dd'),
    };
  });
  // Polls the card until `test` holds for it; the page refreshes every 300 ms as when its tab
  // comes back into view (a cold start can fall between two of the view's 2 s polls).
  const whenCard = async (test, what, timeout = 90000) => {
    const deadline = Date.now() + timeout;
    let seen = null;
    let nudged = 0;
    for (;;) {
      seen = await readCard();
      if (seen && test(seen)) return seen;
      check(Date.now() < deadline, 'the card of cold never showed ' + what + ': ' + JSON.stringify(seen));
      if (Date.now() - nudged >= 300) {
        nudged = Date.now();
        await page.evaluate(() => document.dispatchEvent(new Event('visibilitychange')));
      }
      await page.waitForTimeout(50);
    }
  };

  await signIn(ui);
  await page.click('nav a[data-view="deployments"]');
  await page.waitForSelector('#view-deployments:not([hidden])');
  await page.evaluate(() => { window.__sameDocument = true; });

  // At zero: it reads as scaled to zero, not as degraded or converging.
  const zero = await whenCard(c => c.zero === 'scaled-to-zero', 'scaled to zero', 30000);
  check(zero.desired === 0 && zero.ready === 0, 'no replica wanted: ' + JSON.stringify(zero));
  check(zero.badge === 'scaled to zero', 'its state reads "scaled to zero": ' + JSON.stringify(zero));
  check(!/degraded|converging|unsatisfiable|failed/.test(zero.badgeClass), 'not as a failure: ' + JSON.stringify(zero));
  check(zero.reason === null, 'with no reason for trouble: ' + JSON.stringify(zero));
  check(/^Scaled to zero · .*the next request starts one \(a cold start\)$/.test(zero.scaledToZero), 'what scaled to zero means: ' + zero.scaledToZero);
  check(zero.coldStart === null, 'no cold start yet: ' + JSON.stringify(zero));
  check(zero.band === 'nothing to measure: scaled to zero', 'nothing measured at zero: ' + zero.band);
  check(zero.routing === 'session (X-Conversation)', 'its routing policy, with its header: ' + zero.routing);
  await ui.shot('scaled-to-zero');
  signal('at-zero', {});

  // The test's two requests wait for a cold start: the card says so, first thing under its name.
  const cold = await whenCard(c => c.zero === 'cold-start' && c.waiting === 2, 'a cold start with 2 requests waiting');
  check(/^Cold start in progress: 2 requests waiting · /.test(cold.coldStart), 'the cold start, with its count: ' + cold.coldStart);
  check(cold.coldStartFirst, 'prominently, right under its name: ' + JSON.stringify(cold));
  check(cold.badge === 'cold start', 'its state reads "cold start": ' + JSON.stringify(cold));
  check(cold.scaledToZero === null, 'no longer "scaled to zero": ' + JSON.stringify(cold));
  check(cold.ready === 0, 'while no replica is ready: ' + JSON.stringify(cold));
  await ui.shot('cold-start');
  signal('cold-start', { waiting: cold.waiting, text: cold.coldStart, desired: cold.desired });

  // The replica is up: serving, the cold start gone. The deployment's status follows its
  // replica's on the reconciler's next pass, so the card may read "converging" in between.
  const up = await whenCard(c => c.ready === 1 && c.zero === null && c.status !== 'converging', 'one ready replica, no cold start, converged');
  check(up.status === 'serving' && up.badge === 'serving', 'serving again: ' + JSON.stringify(up));
  check(up.coldStart === null && up.scaledToZero === null, 'neither cold start nor zero shown: ' + JSON.stringify(up));
  await ui.shot('woken');
  check(await page.evaluate(() => window.__sameDocument === true), 'all of it without a reload');
  await ui.close();
});
