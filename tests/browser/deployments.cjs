// The Deployments view follows deployments without a reload: one created through the form (after
// its 422s: a suggestion that fixes the name, and a hostile model id echoed back as plain text)
// reaches serving, scales to 2, rolls out a new revision with the old and new replicas side by
// side, and rolls back; a guarded launch waits until Approve is clicked; Delete asks first.
'use strict';
const { open, signIn, admin, check, main, checkPhoneWidth } = require('./lib.cjs');

main(async () => {
  // The form's 422s are the point of its first steps; nothing else may log an error.
  const ui = await open({ allowErrors: [/status of 422/] });
  const { page } = ui;
  const gated = process.env.SKYLAUNCH_UI_GATED; // created by the test, its launch guarded
  const card = name => page.locator('[data-deployment="' + name + '"]');
  const serving = (name, n, more = '') => page.locator('[data-deployment="' + name + '"][data-status="serving"][data-ready="' + n + '"][data-desired="' + n + '"]' + more).waitFor({ timeout: 60000 });

  await signIn(ui);
  await page.click('nav a[data-view="deployments"]');
  await page.waitForSelector('#view-deployments:not([hidden])');
  check(/#\/deployments$/.test(page.url()), 'the view has its address: ' + page.url());
  await page.evaluate(() => { window.__sameDocument = true; });

  // The guarded deployment waits: its launch is a pending action with Approve and Reject.
  const pending = card(gated).locator('tr[data-kind="launch_replica"][data-state="pending"]');
  await pending.waitFor();
  check(await pending.locator('button:has-text("Reject")').count() === 1, 'a pending action can be rejected');
  check(await card(gated).getAttribute('data-ready') === '0', 'nothing launched before the approval');
  check((await card(gated).textContent()).includes('waiting for approval'), 'the card says an action waits');

  // The form: a bad name gets the API's 422 and a suggestion that fixes it.
  await page.click('#new-deployment summary');
  await page.fill('#df-name', 'Chat_One');
  await page.fill('#df-model', 'echo/chat-one');
  await page.selectOption('#df-provider', 'local');
  check(await page.locator('#df-gpu').isHidden(), 'no GPU choice for the local provider');
  await page.click('#deployment-submit');
  const suggestion = page.locator('#deployment-form [data-error-for="name"] button.suggestion', { hasText: 'chat-one' });
  await suggestion.waitFor();
  await ui.shot('form-error');
  await suggestion.click();
  check(await page.inputValue('#df-name') === 'chat-one', 'the suggestion replaced the name');
  check(await page.locator('#deployment-form [data-error-for="name"]').textContent() === '', 'the error went away');

  // A hostile model id comes back inside the 422's message: shown as text, never as markup.
  const hostile = '<img src=x onerror=window.__xss=1>';
  await page.fill('#df-model', hostile);
  await page.click('#deployment-submit');
  const modelError = page.locator('#deployment-form [data-error-for="model"]');
  await page.waitForFunction(() => document.querySelector('#deployment-form [data-error-for="model"]').textContent.length > 0);
  check((await modelError.textContent()).includes(hostile), 'the message shows the input as text: ' + await modelError.textContent());
  check(await page.locator('#view-deployments img').count() === 0, 'no element made from the message');
  check(await page.evaluate(() => window.__xss === undefined), 'no script ran');

  // Created for real: one replica on this machine, serving, without a reload.
  await page.fill('#df-model', 'echo/chat-one');
  await page.click('#deployment-submit');
  await card('chat-one').waitFor();
  check(!(await page.locator('#new-deployment').evaluate(d => d.open)), 'the form folds away once created');
  await serving('chat-one', 1);
  check((await card('chat-one').locator('.fact-ready dd').textContent()) === '1/1', 'ready 1/1 shown');
  check((await card('chat-one').locator('.fact-cost dd').textContent()).startsWith('$'), 'the hourly estimate shown');
  check(await card('chat-one').locator('.revision[data-revision="1"] tr[data-status="ready"]').count() === 1, 'its replica, ready, under revision 1');
  check(await card('chat-one').locator('button:has-text("Retry")').count() === 0, 'no Retry while serving');
  check(await card('chat-one').locator('button:has-text("Roll back")').count() === 0, 'no Roll back at revision 1');
  await ui.shot('serving');

  // Scale to 2 from the card.
  await card('chat-one').locator('.scale-input').fill('2');
  await card('chat-one').locator('button:has-text("Scale")').click();
  await serving('chat-one', 2);
  check((await card('chat-one').locator('.fact-ready dd').textContent()) === '2/2', 'ready 2/2 shown');

  // Approve the guarded launch: its replica comes up.
  await pending.locator('button:has-text("Approve")').click();
  await serving(gated, 1);
  check(await card(gated).locator('tr[data-kind="launch_replica"][data-state="pending"]').count() === 0, 'no longer pending');

  // A new revision (through the API) whose drains wait for approval: the rollout shows the old
  // and the new replicas side by side, and its progress.
  const spec = { name: 'chat-one', model: 'echo/chat-one', provider: 'local', replicas: 2, envs: { REVISION: 'two' }, approval: { guarded: ['drain_replica'] } };
  await admin(ui, 'PUT', '/admin/deployments/chat-one', spec);
  await card('chat-one').locator('.revision.old[data-revision="1"]').waitFor();
  await card('chat-one').locator('.revision.current[data-revision="2"] tr[data-status="ready"]').waitFor({ timeout: 60000 });
  await page.waitForFunction(() => /Rollout to revision 2: [12] of 2 replicas on the new revision/.test(document.querySelector('[data-deployment="chat-one"] .rollout')?.textContent || ''));
  await ui.shot('rollout');
  // Each old replica's drain is approved from the page until the rollout is done.
  const deadline = Date.now() + 90000;
  for (;;) {
    const done = await page.locator('[data-deployment="chat-one"][data-status="serving"][data-revision="2"][data-ready="2"]').count() === 1
      && await card('chat-one').locator('.revision.old').count() === 0;
    if (done) break;
    check(Date.now() < deadline, 'the rollout finished within 90 s');
    const approve = card('chat-one').locator('tr[data-kind="drain_replica"][data-state="pending"] button:has-text("Approve"):enabled');
    if (await approve.count()) await approve.first().click({ timeout: 2000 }).catch(() => {}); // a refresh may replace it: try again
    await page.waitForTimeout(300);
  }
  check(await card('chat-one').locator('.revision').count() === 1, 'one revision left');

  // Roll back, confirmed: a revision 3 that runs what revision 1 ran (its drains not guarded).
  await card('chat-one').locator('button:has-text("Roll back")').click();
  await page.waitForSelector('#confirm-dialog[open]');
  await page.click('#confirm-yes');
  await serving('chat-one', 2, '[data-revision="3"]');

  // Delete asks first; "Keep it" changes nothing; confirmed, the card goes away.
  await card('chat-one').locator('button:has-text("Delete")').click();
  await page.waitForSelector('#confirm-dialog[open]');
  await page.click('#confirm-dialog button[value="no"]');
  await page.waitForSelector('#confirm-dialog[open]', { state: 'detached' });
  check(await card('chat-one').getAttribute('data-status') === 'serving', 'still serving after Keep it');
  await card('chat-one').locator('button:has-text("Delete")').click();
  await page.click('#confirm-yes');
  await card('chat-one').waitFor({ state: 'detached', timeout: 60000 });
  check(await page.evaluate(() => window.__sameDocument === true), 'all of it without a reload');
  await ui.shot('after-delete');

  // A phone-sized screen: nothing overflows sideways.
  await checkPhoneWidth(ui);
  await ui.shot('phone');
  await ui.close();
});
