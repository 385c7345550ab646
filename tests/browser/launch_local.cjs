// The operator's main path: sign in from the start-up link, open Launch Instance from the
// keyboard, get a validation error with a clickable suggestion, launch with the local provider,
// watch the stages reach ready, see the node in the fleet, and chat with it through /v1.
'use strict';
const { open, signIn, check, main } = require('./lib.cjs');

main(async () => {
  // The one 422 below is the point of the validation step; nothing else may log an error.
  const ui = await open({ allowErrors: [/status of 422/] });
  const { page } = ui;
  await signIn(ui);
  await ui.shot('fleet-empty');

  // Keyboard: focus the button, press Enter; the dialog opens with focus in the model field.
  await page.focus('#open-launch');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#launch-dialog[open]');
  check(await page.evaluate(() => document.activeElement.id) === 'lf-model', 'focus is in the model field');

  // A misspelt region: the API's 422 appears next to the regions field, with a suggestion.
  await page.fill('#lf-model', 'Qwen/Qwen2.5-0.5B-Instruct');
  // (SkyPilot is the stand-in `sky`, whose `sky check` enables AWS: the dialog offers it.)
  await page.selectOption('#lf-provider', 'skypilot');
  await page.selectOption('#lf-cloud', 'aws');
  await page.selectOption('#lf-gpu', 'L4');
  await page.fill('#lf-regions', 'us-east1');
  await page.click('#launch-submit');
  const suggestion = page.locator('[data-error-for="regions"] button.suggestion', { hasText: 'us-east-1' });
  await suggestion.first().waitFor();
  await ui.shot('validation-error');
  await suggestion.first().click();
  check(await page.inputValue('#lf-regions') === 'us-east-1', 'the suggestion replaced the bad region');
  check(await page.locator('[data-error-for="regions"]').textContent() === '', 'the error went away');

  // Now a real launch, on this machine.
  await page.selectOption('#lf-provider', 'local');
  check(await page.locator('#lf-gpu').isHidden(), 'no GPU choice for the local provider');
  await page.click('#launch-submit');
  await page.waitForSelector('#view-launch:not([hidden])');
  check(/#\/launch\//.test(page.url()), 'the launch page opened: ' + page.url());
  // Stages advance live (no reload) until the last one is done.
  await page.waitForSelector('#launch-stages li[data-stage="register"][data-state="done"]', { timeout: 90000 });
  await page.waitForSelector('#launch-stages li[data-stage="ready"][data-state="done"]', { timeout: 90000 });
  await page.waitForSelector('#launch-status.s-succeeded');
  const stages = await page.locator('#launch-stages li').evaluateAll(items => items.map(li => li.dataset.stage + ':' + li.dataset.state));
  check(stages.join(',') === 'validate:done,render_task:done,provision:done,instance_up:done,setup:done,start_model_server:done,register:done,ready:done'
    || stages.every(s => /:(done|skipped)$/.test(s)), 'every stage done or skipped: ' + stages);
  const times = await page.locator('#launch-stages li[data-state="done"] .stage-time').allTextContents();
  check(times.some(t => /\d/.test(t)), 'stages show their time: ' + times);
  // The provider log on demand.
  await page.click('#launch-log summary');
  await page.waitForFunction(() => document.querySelector('#launch-log pre').textContent.length > 0);
  await ui.shot('launch-ready');

  // The fleet lists the node, ready, with its health bar.
  await page.click('nav a[data-view="fleet"]');
  const row = page.locator('#fleet-rows tr[data-status="ready"]');
  await row.first().waitFor();
  check(await row.first().locator('.health .bar').count() === 1, 'a health bar');
  check((await row.first().textContent()).includes('Qwen/Qwen2.5-0.5B-Instruct'), 'the model is shown');
  await ui.shot('fleet-ready');

  // Try the model: the answer streams back through the load balancer.
  await page.click('nav a[data-view="chat"]');
  await page.waitForFunction(() => [...document.querySelectorAll('#chat-model option')].some(o => o.value === 'Qwen/Qwen2.5-0.5B-Instruct'));
  await page.fill('#chat-prompt', 'hello from the browser test');
  await page.click('#chat-send');
  await page.waitForSelector('#chat-answer[data-done="true"]');
  const answer = await page.textContent('#chat-answer');
  check(answer.includes('hello from the browser test'), 'the echo model answered: ' + answer);
  await ui.shot('chat');

  // A phone-sized screen: the fleet stacks into cards, nothing overflows sideways.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.click('nav a[data-view="fleet"]');
  await row.first().waitFor();
  const layout = await page.evaluate(() => ({
    overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    cell: getComputedStyle(document.querySelector('#fleet-rows td')).display,
    head: document.querySelector('#fleet-table thead').getBoundingClientRect().height,
  }));
  check(layout.overflow <= 1, 'no sideways scrolling on a phone: ' + layout.overflow + 'px');
  check(layout.cell === 'block' && layout.head <= 1, 'the table became stacked cards: ' + JSON.stringify(layout));
  await ui.shot('fleet-phone');
  await ui.close();
});
