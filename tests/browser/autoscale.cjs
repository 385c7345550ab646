// The Deployments view follows an autoscaled deployment without a reload. The form's Autoscale
// part first gets the API's 422s next to their inputs (a target of 0; a minimum above the
// maximum) and shows scale to zero's settings only for a minimum of 0, then creates `auto` (the echo server, slower the more it answers at once:
// ECHO_DELAY_MS and ECHO_DELAY_PER_REQUEST_MS in its environment). Once the page shows its ready
// replica (the scenario writes `one-ready`), the test (tests/ui_browser.rs) sends six clients'
// worth of load: the card shows in-flight
// requests per replica above the target of 2, the decision "1 → 3" with its reason, and the two
// scale-up launches. The scenario then writes `scaled-up` into SKYLAUNCH_UI_SIGNALS; the test
// stops the load once 3 replicas are ready, and the card shows a decision going down, and its
// drain. What the page showed goes back to the test as `scaled-up` and `scaled-down` (JSON).
'use strict';
const fs = require('fs');
const path = require('path');
const { open, signIn, check, main, checkPhoneWidth } = require('./lib.cjs');

main(async () => {
  // The form's 422s are the point of its first steps; nothing else may log an error.
  const ui = await open({ allowErrors: [/status of 422/] });
  const { page } = ui;
  const signals = process.env.SKYLAUNCH_UI_SIGNALS;
  check(signals, 'SKYLAUNCH_UI_SIGNALS is set (tests/ui_browser.rs sets it)');
  const signal = (name, what) => fs.writeFileSync(path.join(signals, name), JSON.stringify(what));
  const card = page.locator('[data-deployment="auto"]');
  // The card's autoscale block, read in one go (a refresh may replace it between two reads).
  const readBlock = () => page.evaluate(() => {
    const b = document.querySelector('[data-deployment="auto"] section.autoscale');
    if (!b) return null;
    const decision = b.querySelector('.autoscale-decision');
    return {
      band: b.dataset.band, value: b.dataset.value == null ? null : Number(b.dataset.value), stale: b.dataset.stale,
      metric: b.querySelector('.autoscale-metric').textContent, range: b.querySelector('.autoscale-range').textContent,
      decision: decision.textContent, from: decision.dataset.from == null ? null : Number(decision.dataset.from),
      to: decision.dataset.to == null ? null : Number(decision.dataset.to),
      reason: (decision.querySelector('.decision-reason')?.textContent || '').replace(/^: /, ''),
    };
  });
  // Polls the block until `test` holds for it; returns what it showed then. With `nudge`, the
  // page refreshes every 500 ms as when its tab comes back into view (a state that lasts about
  // as long as the view's 2 s poll could fall between two polls).
  const whenBlock = async (test, what, { timeout = 90000, nudge = false } = {}) => {
    const deadline = Date.now() + timeout;
    let seen = null;
    let nudged = 0;
    for (;;) {
      seen = await readBlock();
      if (seen && test(seen)) return seen;
      check(Date.now() < deadline, 'the autoscale block never showed ' + what + ': ' + JSON.stringify(seen));
      if (nudge && Date.now() - nudged >= 500) {
        nudged = Date.now();
        await page.evaluate(() => document.dispatchEvent(new Event('visibilitychange')));
      }
      await page.waitForTimeout(100);
    }
  };
  // The card's scaling actions (in progress or finished), each once, by id.
  const scalingRows = drift => page.evaluate(drift => {
    const rows = new Map();
    for (const tr of document.querySelectorAll('[data-deployment="auto"] tr[data-drift="' + drift + '"]')) {
      rows.set(tr.dataset.action, { kind: tr.dataset.kind, state: tr.dataset.state, why: tr.querySelector('td.why').textContent, text: tr.textContent });
    }
    return [...rows.values()];
  }, drift);
  const waitRows = async (drift, enough, what, timeout = 90000) => {
    const deadline = Date.now() + timeout;
    for (;;) {
      const rows = await scalingRows(drift);
      if (enough(rows)) return rows;
      check(Date.now() < deadline, 'the card never showed ' + what + ': ' + JSON.stringify(rows));
      await page.waitForTimeout(250);
    }
  };

  await signIn(ui);
  await page.click('nav a[data-view="deployments"]');
  await page.waitForSelector('#view-deployments:not([hidden])');
  await page.evaluate(() => { window.__sameDocument = true; });

  // The form: the Autoscale part is folded away until it is asked for.
  await page.click('#new-deployment summary');
  check(await page.locator('#df-autoscale-fields').isHidden(), 'the autoscale part is hidden until its box is checked');
  await page.fill('#df-name', 'auto');
  await page.fill('#df-model', 'echo/auto');
  await page.selectOption('#df-provider', 'local');
  await page.fill('#df-replicas', '1');
  await page.fill('#df-envs', 'ECHO_DELAY_MS=100\nECHO_DELAY_PER_REQUEST_MS=50');
  await page.check('#df-autoscale');
  await page.locator('#df-autoscale-fields').waitFor();
  await page.fill('#df-as-min', '1');
  await page.fill('#df-as-max', '3');
  await page.selectOption('#df-as-metric', 'in_flight');
  await page.fill('#df-as-target', '0');
  await page.fill('#df-as-up', '1');
  await page.fill('#df-as-down', '2');
  await page.fill('#df-as-window', '2');
  const fieldError = (input, field) => page.locator('.field:has(' + input + ') [data-error-for="' + field + '"]');
  const topsClear = async () => {
    check(await page.locator('#deployment-form [data-error-for="_form"]').textContent() === '', 'nothing at the form\'s top');
    check(await page.locator('#deployment-form [data-error-for="autoscale"]').textContent() === '', 'nor at the autoscale part\'s top');
  };

  // A target of 0: the API's 422 sits next to the target's input.
  await page.click('#deployment-submit');
  const targetError = fieldError('#df-as-target', 'autoscale.target');
  await page.waitForFunction(() => (document.querySelector('[data-error-for="autoscale.target"]')?.textContent || '').length > 0);
  check((await targetError.textContent()).includes('target'), 'the API says why: ' + await targetError.textContent());
  await topsClear();
  await page.fill('#df-as-target', '2');
  check(await targetError.textContent() === '', 'the error goes once the target is edited');

  // A minimum of 0 offers scaling to zero's settings; any other hides them.
  check(await page.locator('#df-autoscale-zero').isHidden(), 'no scale-to-zero settings with a minimum of 1');
  await page.fill('#df-as-min', '0');
  check(await page.locator('#df-autoscale-zero').isVisible(), 'a minimum of 0 shows the scale-to-zero settings');
  await page.fill('#df-as-min', '1');
  check(await page.locator('#df-autoscale-zero').isHidden(), 'and a minimum of 1 hides them again');

  // A minimum above the maximum: the API's 422 sits next to the maximum's input.
  await page.fill('#df-as-min', '4');
  await page.click('#deployment-submit');
  const maxError = fieldError('#df-as-max', 'autoscale.max_replicas');
  await page.waitForFunction(() => (document.querySelector('[data-error-for="autoscale.max_replicas"]')?.textContent || '').length > 0);
  check((await maxError.textContent()).includes('max_replicas'), 'the API says why: ' + await maxError.textContent());
  check(await fieldError('#df-as-min', 'autoscale.min_replicas').textContent() === '', 'not next to the minimum');
  await topsClear();
  await ui.shot('min-above-max');
  await page.fill('#df-as-min', '1');
  await page.fill('#df-as-max', '3');
  check(await maxError.textContent() === '', 'the error goes once the maximum is edited');
  check(await card.count() === 0, 'nothing created by the refused forms');

  // Created: the card shows the policy before anything is measured.
  await page.click('#deployment-submit');
  await card.waitFor();
  check(!(await page.locator('#new-deployment').evaluate(d => d.open)), 'the form folds away once created');
  check(await page.locator('#df-autoscale-fields').isHidden(), 'and its autoscale part with it');
  const first = await whenBlock(s => s.range.includes('1–3 replicas'), 'the range', { timeout: 30000 });
  check(/in_flight .* \/ target 2\.00/.test(first.metric), 'the metric against its target: ' + first.metric);
  check(/averaged over 2 s · up after 1 s above, down after 2 s below/.test(first.range), 'the window and the delays: ' + first.range);
  await page.locator('[data-deployment="auto"][data-ready="1"]').waitFor({ timeout: 60000 });
  // The test starts its load only now: started when the API showed the first replica ready, it
  // could scale the deployment to 3 before the page (busy with the checks above) saw 1.
  signal('one-ready', {});

  // Under load (the test's six clients): the value per replica above the target (while the
  // one replica takes it all: a couple of seconds), then the decision to go from 1 to 3
  // replicas, and its two launches.
  const above = await whenBlock(s => s.band === 'above', 'the value above the target', { nudge: true });
  check(above.value > 2 * 1.1, 'the value is above the target\'s band: ' + JSON.stringify(above));
  check(/^in_flight \d+\.\d\d per replica \/ target 2\.00 ▲ above the target/.test(above.metric), 'shown against its target, with the cue: ' + above.metric);
  check(above.metric.startsWith('in_flight ' + above.value.toFixed(2) + ' '), 'the value shown is the API\'s: ' + JSON.stringify(above));
  await ui.shot('above-target');
  const up = await whenBlock(s => s.from === 1 && s.to === 3, 'the decision 1 → 3');
  check(up.decision.includes('1 → 3'), 'the decision reads from → to: ' + up.decision);
  check(/^in_flight \d+\.\d\d per ready replica above the target 2\.00 for \d+ s: 1 → 3 replicas$/.test(up.reason), 'with its reason: ' + up.reason);
  check(/ at \d/.test(up.decision), 'and when: ' + up.decision);
  const launches = await waitRows('scale_up', rows => rows.filter(r => r.state === 'completed').length === 2, 'two scale-up launches done');
  for (const r of launches) {
    check(r.kind === 'launch_replica', 'a scale-up launches: ' + JSON.stringify(r));
    check(r.why === '▲ autoscale: scale up', 'it reads as a scale-up: ' + JSON.stringify(r));
    check(r.text.includes('autoscale: in_flight') && r.text.includes('1 → 3 replicas'), 'with the decision\'s reason: ' + JSON.stringify(r));
  }
  await page.locator('[data-deployment="auto"][data-ready="3"][data-desired="3"]').waitFor({ timeout: 60000 });
  await ui.shot('scaled-up');
  signal('scaled-up', { from: up.from, to: up.to, reason: up.reason, value: above.value });

  // The load stopped (by the test): the value falls below the target, and after the down
  // delay a replica goes, drained first. The decisions 3 → 2 and then 2 → 1 may follow each
  // other within one of the view's polls: the block shows a decision going down, and the
  // card's actions (which stay) the drain of 3 → 2.
  const down = await whenBlock(s => s.from > s.to && s.from <= 3, 'a decision going down', { nudge: true });
  check(/below the target 2\.00 for \d+ s: \d → \d replicas$/.test(down.reason), 'the decision going down, with its reason: ' + down.reason);
  check(down.decision.includes(down.from + ' → ' + down.to), 'from → to: ' + down.decision);
  const below = await whenBlock(s => s.band === 'below', 'the value below the target');
  check(/▼ below the target/.test(below.metric), 'the cue below the target: ' + below.metric);
  const drains = await waitRows('scale_down', rows => rows.some(r => r.kind === 'drain_replica' && r.text.includes('3 → 2 replicas')), 'the drain of 3 → 2');
  for (const r of drains) {
    check(r.why === '▼ autoscale: scale down', 'it reads as a scale-down: ' + JSON.stringify(r));
    check(r.text.includes('autoscale: in_flight') && r.text.includes('below the target'), 'with the decision\'s reason: ' + JSON.stringify(r));
  }
  const drain32 = drains.find(r => r.kind === 'drain_replica' && r.text.includes('3 → 2 replicas'));
  const m = /autoscale: (in_flight .*? (\d+) → (\d+) replicas)/.exec(drain32.text);
  check(m, 'the drain names its decision: ' + drain32.text);
  await ui.shot('scaling-down');
  signal('scaled-down', { from: Number(m[2]), to: Number(m[3]), reason: m[1] });
  check(await page.evaluate(() => window.__sameDocument === true), 'all of it without a reload');

  // A phone-sized screen: nothing overflows sideways.
  await checkPhoneWidth(ui);
  await ui.shot('phone');
  await ui.close();
});
