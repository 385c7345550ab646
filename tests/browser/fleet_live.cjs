// The fleet view follows the fleet without a reload: a node whose agent reports a low health
// score turns unhealthy in place; drain and terminate ask for confirmation first; the node
// detail shows its events.
'use strict';
const { open, signIn, check, main } = require('./lib.cjs');

main(async () => {
  const ui = await open();
  const { page } = ui;
  const nodes = JSON.parse(process.env.SKYLAUNCH_UI_NODES); // [{id, token, name}], all ready
  const heartbeat = (node, score) => fetch(ui.base + '/admin/nodes/' + node.id + '/heartbeat', {
    method: 'POST', headers: { Authorization: 'Bearer ' + node.token, 'Content-Type': 'application/json' },
    body: JSON.stringify({ health_score: score, model_server: { ready: true } }),
  }).then(r => { if (!r.ok) throw new Error('heartbeat ' + r.status); });

  await signIn(ui);
  const row = node => page.locator('#fleet-rows tr[data-node="' + node.id + '"]');
  for (const n of nodes) await row(n).and(page.locator('[data-status="ready"]')).waitFor();
  await page.evaluate(() => { window.__sameDocument = true; });

  // The agent of the first node reports trouble: its row turns unhealthy, with the reason.
  await heartbeat(nodes[0], 0.2);
  await page.locator('#fleet-rows tr[data-node="' + nodes[0].id + '"][data-status="unhealthy"]').waitFor();
  check(await page.evaluate(() => window.__sameDocument === true), 'updated without a reload');
  check((await row(nodes[0]).textContent()).includes('0.20'), 'the new score is shown');
  check(await row(nodes[0]).locator('.health.low').count() === 1, 'a low health bar');
  await ui.shot('unhealthy');

  // Keyboard: focus stays on a row's button while the table re-renders around it.
  await row(nodes[1]).locator('button:has-text("Drain")').focus();
  await heartbeat(nodes[0], 0.3);
  await page.waitForFunction(() => document.querySelector('#fleet-rows').textContent.includes('0.30'));
  check(await page.evaluate(() => document.activeElement.getAttribute('aria-label')) === 'Drain ' + nodes[1].name,
    'focus kept on the Drain button across an update');
  // The skip link moves focus to the content and leaves the view where it is.
  await page.evaluate(() => document.querySelector('.skip').focus());
  await page.keyboard.press('Enter');
  check(await page.locator('#view-fleet').isVisible(), 'the skip link keeps the fleet view');

  // Drain asks first; "Keep it" changes nothing.
  await row(nodes[1]).locator('button:has-text("Drain")').click();
  await page.waitForSelector('#confirm-dialog[open]');
  await page.click('#confirm-dialog button[value="no"]');
  await page.waitForSelector('#confirm-dialog[open]', { state: 'detached' });
  check(await row(nodes[1]).getAttribute('data-status') === 'ready', 'still ready after Keep it');
  await row(nodes[1]).locator('button:has-text("Drain")').click();
  await page.click('#confirm-yes');
  await page.locator('#fleet-rows tr[data-node="' + nodes[1].id + '"][data-status="draining"]').waitFor();

  // Terminate, confirmed.
  await row(nodes[1]).locator('button:has-text("Terminate")').click();
  check((await page.textContent('#confirm-text')).length > 0, 'the confirmation says what happens');
  await page.click('#confirm-yes');
  await page.locator('#fleet-rows tr[data-node="' + nodes[1].id + '"][data-status="terminated"]').waitFor();
  await ui.shot('after-actions');

  // The node detail lists its events, newest status change included.
  await row(nodes[0]).locator('a').first().click();
  await page.waitForSelector('#view-node:not([hidden])');
  await page.waitForFunction(() => [...document.querySelectorAll('#node-events li')].some(li => li.textContent.includes('ready → unhealthy')));
  await ui.shot('node-detail');
  await ui.close();
});
