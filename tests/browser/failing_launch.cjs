// A SkyPilot launch that fails (the stand-in sky replays a recorded failover that ends in
// credential errors): the current attempt shows while it runs, then the friendly error with its
// suggestions and actions, the raw output folded underneath; the history filters find it.
'use strict';
const { open, signIn, check, main } = require('./lib.cjs');

main(async () => {
  const ui = await open();
  const { page } = ui;
  await signIn(ui);
  await page.click('#open-launch');
  await page.fill('#lf-model', 'meta-llama/Llama-3.1-8B-Instruct');
  await page.selectOption('#lf-provider', 'skypilot');
  await page.selectOption('#lf-cloud', 'aws');
  await page.selectOption('#lf-gpu', 'L4');
  await page.check('input[name="market"][value="spot"]');
  await page.selectOption('#lf-fallback', 'on_demand');
  await page.fill('#lf-regions', 'us-east-1, us-west-2');
  await page.click('#launch-submit');
  await page.waitForSelector('#view-launch:not([hidden])');

  // While SkyPilot works through its placements, the page says which one is in hand (this
  // recorded failover refuses each one at once, so it mostly shows "Tried …").
  await page.waitForFunction(() => /^(Trying|Tried) AWS us-(east|west)-\d[^,]*, spot, g6\.xlarge, \$0\.\d\d\/h/.test(document.querySelector('#launch-attempt').textContent));
  await ui.shot('trying');

  const panel = page.locator('#launch-error');
  await panel.waitFor({ timeout: 90000 });
  await page.waitForSelector('#launch-status.s-failed');
  const title = await page.textContent('#launch-error-title');
  check(/credential/i.test(title), 'a plain-words title: ' + title);
  const suggestions = await page.locator('#launch-error-suggestions li').allTextContents();
  check(suggestions.some(s => s.includes('sky check')), 'suggestions say what to do: ' + suggestions);
  check(await page.locator('#launch-attempt').textContent() === '', 'no attempt shown as current once it failed');
  // The raw provider output is there, folded.
  check(!(await page.locator('#launch-error-raw').evaluate(d => d.open)), 'raw output starts folded');
  await page.click('#launch-error-raw summary');
  check((await page.textContent('#launch-error-raw pre')).length > 0, 'raw output shown on demand');
  check(await page.locator('#launch-attempts tr').count() >= 2, 'the placements tried are listed');
  check(await page.locator('#launch-stages li[data-state="failed"]').count() === 1, 'one stage failed');
  await ui.shot('failed');

  // The error's action reopens the form with the same request.
  await page.click('#launch-error-actions button:has-text("Edit and retry")');
  await page.waitForSelector('#launch-dialog[open]');
  check(await page.inputValue('#lf-model') === 'meta-llama/Llama-3.1-8B-Instruct', 'model prefilled');
  check(await page.inputValue('#lf-gpu') === 'L4', 'GPU prefilled');
  check(await page.inputValue('#lf-regions') === 'us-east-1, us-west-2', 'regions prefilled');
  await page.keyboard.press('Escape');
  await page.waitForSelector('#launch-dialog[open]', { state: 'detached' });

  // Launch history with filters.
  await page.click('nav a[data-view="launches"]');
  await page.waitForSelector('#launch-rows tr[data-job]');
  await page.selectOption('#launch-filters select[name="status"]', 'failed');
  check(await page.locator('#launch-rows tr[data-job]').count() === 1, 'the failed launch matches');
  await page.selectOption('#launch-filters select[name="status"]', 'succeeded');
  await page.waitForSelector('#launch-rows tr:not([data-job])');
  check(await page.locator('#launch-rows tr[data-job]').count() === 0, 'no succeeded launch');
  await page.selectOption('#launch-filters select[name="status"]', '');
  await page.fill('#launch-filters input[name="model"]', 'llama');
  check(await page.locator('#launch-rows tr[data-job]').count() === 1, 'the model filter matches');
  await ui.shot('history');
  await ui.close();
});
