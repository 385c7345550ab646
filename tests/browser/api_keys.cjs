// The API keys view makes and revokes keys for /v1 without a reload: a form without a name gets
// the API's 422 next to the name; a key limited to one model and 60 requests a minute is shown
// once, with Copy and the warning that it is shown only now, and listed by its prefix, models and
// limits; /v1 answers that key and, now that a key exists, refuses a request without one; Revoke
// (confirmed) shows it revoked and /v1 refuses it; leaving the view takes the key out of the page.
// A second key, limited in tokens and expiring at a local time, is sent with its expiry in UTC and
// goes from the page once its box is dismissed.
'use strict';
const { open, signIn, admin, check, main, checkPhoneWidth, leaks: leaksIn } = require('./lib.cjs');

const ONCE = 'Shown only now: store it where your clients read it. skylaunch keeps only its hash.';

main(async () => {
  // The invalid form's 422 is one of the steps; nothing else may log an error.
  const ui = await open({ allowErrors: [/status of 422/] });
  const { page, context } = ui;
  // A time zone away from UTC (+05:30, no daylight saving): the expiry typed is local time.
  const cdp = await context.newCDPSession(page);
  await cdp.send('Emulation.setTimezoneOverride', { timezoneId: 'Asia/Kolkata' });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: ui.base });
  const row = name => page.locator('#key-rows tr[data-name="' + name + '"]');
  const cell = (name, label) => row(name).locator('td[data-label="' + label + '"]');
  // GET /v1/models from the test (not the page), with a key or none: its status.
  const models = key => fetch(ui.base + '/v1/models', { headers: key ? { Authorization: 'Bearer ' + key } : {} }).then(r => r.status);
  const leaks = secret => leaksIn(page, secret);

  check(await models(null) === 200, 'before any key /v1 answers without one');
  await signIn(ui);
  await page.click('nav a[data-view="keys"]');
  await page.waitForSelector('#view-keys:not([hidden])');
  check(/#\/keys$/.test(page.url()), 'the view has its address: ' + page.url());
  await page.evaluate(() => { window.__sameDocument = true; });
  await page.locator('#key-rows', { hasText: 'No API keys yet' }).waitFor();

  // No name: the API's 422 next to the name field; nothing made, no key shown.
  await page.click('#new-key summary');
  await page.fill('#kf-models', 'echo/one');
  await page.click('#key-submit');
  const nameError = page.locator('#key-form [data-error-for="name"]');
  await page.waitForFunction(() => document.querySelector('#key-form [data-error-for="name"]').textContent.length > 0);
  check((await nameError.textContent()).includes('name'), 'the message names the field: ' + await nameError.textContent());
  check(await page.evaluate(() => document.activeElement && document.activeElement.id) === 'kf-name', 'the name field has the focus');
  check((await admin(ui, 'GET', '/admin/api-keys')).api_keys.length === 0, 'nothing made');
  check(await page.locator('#key-shown').isHidden(), 'no key shown');
  await ui.shot('form-error');
  await page.fill('#kf-name', 'team-a');
  check(await nameError.textContent() === '', 'the error goes once the name is edited');

  // team-a, for echo/one at 60 requests a minute: shown once, with Copy.
  await page.fill('#kf-rpm', '60');
  await page.click('#key-submit');
  await page.waitForSelector('#key-shown:not([hidden])');
  const key = (await page.textContent('#key-shown-value')).trim();
  check(key.startsWith('sk-sl-') && key.length > 20, 'the key is shown: ' + key.slice(0, 8) + '…');
  check((await page.textContent('#key-shown-name')) === 'team-a', 'the box names the key');
  check((await page.textContent('#key-shown')).includes(ONCE), 'the box says it is shown only now');
  check(!(await page.locator('#new-key').evaluate(d => d.open)), 'the form folds away once the key is made');
  check(await page.inputValue('#kf-name') === '' && await page.inputValue('#kf-rpm') === '', 'the form starts over');
  await page.click('#key-copy');
  await page.locator('#key-copied', { hasText: 'Copied' }).waitFor();
  check(await page.evaluate(() => navigator.clipboard.readText()) === key, 'Copy puts the key on the clipboard');

  // Listed: its prefix (the key's first 12 characters), its model, its limit, active.
  await row('team-a').waitFor();
  check(await row('team-a').getAttribute('data-status') === 'active', 'team-a is active');
  const prefix = (await cell('team-a', 'Key').textContent()).trim();
  check(prefix === key.slice(0, 12) + '…', 'the prefix shown is the key\'s start: ' + prefix);
  check((await cell('team-a', 'Models').textContent()) === 'echo/one', 'its model shown');
  check((await cell('team-a', 'Limits').textContent()) === '60 req/min', 'its limit shown: ' + await cell('team-a', 'Limits').textContent());
  check((await cell('team-a', 'Expires').textContent()) === 'never', 'it never expires');
  check((await cell('team-a', 'Status').locator('.badge').textContent()) === 'active', 'an active badge');
  check((await cell('team-a', 'Created').textContent()).trim().length > 1, 'when it was made shown');
  const listed = await admin(ui, 'GET', '/admin/api-keys');
  check(listed.api_keys[0].prefix === key.slice(0, 12), 'the API lists the same prefix');
  check(!JSON.stringify(listed).includes(key), 'the list never holds the key');
  await ui.shot('key-shown');

  // /v1 answers the key; without a key (or with a wrong one) it is refused now that one exists.
  check(await models(key) === 200, '/v1/models answers team-a');
  check(await models(null) === 401, '/v1/models refuses a request without a key');
  check(await models('sk-sl-not-a-key') === 401, '/v1/models refuses an unknown key');

  // Revoke asks first; confirmed, team-a shows revoked, without its button, and is refused.
  await row('team-a').locator('button:has-text("Revoke")').click();
  await page.waitForSelector('#confirm-dialog[open]');
  check((await page.textContent('#confirm-title')) === 'Revoke team-a?', 'the dialog names the key');
  await page.click('#confirm-yes');
  await page.locator('#key-rows tr[data-name="team-a"][data-status="revoked"]').waitFor();
  check((await cell('team-a', 'Status').locator('.badge').textContent()) === 'revoked', 'a revoked badge');
  check(await row('team-a').locator('button:has-text("Revoke")').count() === 0, 'no Revoke for a revoked key');
  check(await models(key) === 401, '/v1/models refuses the revoked key');
  await ui.shot('revoked');

  // Leaving the view takes the key out of the page; back, it is not shown again.
  await page.click('nav a[data-view="fleet"]');
  await page.waitForSelector('#view-fleet:not([hidden])');
  check(await leaks(key) === 0, 'the key is nowhere in the page once the view is left');
  await page.click('nav a[data-view="keys"]');
  await page.locator('#key-rows tr[data-name="team-a"][data-status="revoked"]').waitFor();
  check(await page.locator('#key-shown').isHidden(), 'the key box stays hidden');
  check(await leaks(key) === 0, 'the key is not shown again');

  // team-b, for every model at 50,000 tokens a minute, expiring at a local time: sent in UTC.
  await page.click('#new-key summary');
  await page.fill('#kf-name', 'team-b');
  await page.fill('#kf-tpm', '50000');
  await page.fill('#kf-expires', '2031-05-06T07:08');
  await page.click('#key-submit');
  await page.waitForSelector('#key-shown:not([hidden])');
  const second = (await page.textContent('#key-shown-value')).trim();
  check(second.startsWith('sk-sl-') && second !== key, 'a new key shown');
  await row('team-b').waitFor();
  check((await cell('team-b', 'Models').textContent()) === 'all models', 'every model');
  check((await cell('team-b', 'Limits').textContent()) === '50,000 tokens/min', 'its token limit shown: ' + await cell('team-b', 'Limits').textContent());
  const b = (await admin(ui, 'GET', '/admin/api-keys')).api_keys.find(k => k.name === 'team-b');
  check(Date.parse(b.expires_at) === Date.parse('2031-05-06T01:38:00Z'), '07:08 in Kolkata is 01:38 UTC: ' + b.expires_at);
  const expires = (await cell('team-b', 'Expires').textContent()).trim();
  check(expires === await page.evaluate(() => new Date('2031-05-06T07:08').toLocaleString()), 'its expiry shown in local time: ' + expires);
  check((await page.locator('#key-rows tr').first().getAttribute('data-name')) === 'team-b', 'newest first');
  await page.click('#key-dismiss');
  check(await page.locator('#key-shown').isHidden(), 'dismissed, the box goes');
  check(await leaks(second) === 0, 'and the key with it');
  check(await page.evaluate(() => window.__sameDocument === true), 'all of it without a reload');
  await ui.shot('two-keys');

  // A phone-sized screen: nothing overflows sideways.
  await checkPhoneWidth(ui);
  await ui.shot('phone');
  await ui.close();
});
