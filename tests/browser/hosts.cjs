// The Hosts view follows SSH hosts without a reload: one added by password (its host key given)
// is probed and shows `available` with its OS and host key fingerprint; one added by private key
// at a port nothing listens on shows `error` with the reason; a form without a name gets the API's
// 422 next to the name; Probe again probes the good host anew; its events open under its row;
// Remove (confirmed) takes the bad host away. No credential stays in the page once sent.
'use strict';
const { open, signIn, admin, check, main, checkPhoneWidth, leaks: leaksIn } = require('./lib.cjs');

const env = name => {
  const v = process.env[name];
  if (!v) throw new Error(name + ' is not set (tests/ui_browser.rs sets it)');
  return v;
};

main(async () => {
  // The invalid form's 422 is one of the steps; nothing else may log an error.
  const ui = await open({ allowErrors: [/status of 422/] });
  const { page } = ui;
  const port = env('SKYLAUNCH_UI_SSH_PORT');
  const user = env('SKYLAUNCH_UI_SSH_USER');
  const password = env('SKYLAUNCH_UI_SSH_PASSWORD');
  const key = env('SKYLAUNCH_UI_SSH_KEY');
  const hostKey = env('SKYLAUNCH_UI_SSH_HOST_KEY');
  const fingerprint = env('SKYLAUNCH_UI_SSH_FINGERPRINT');
  const keyBody = key.split('\n')[1];
  const row = name => page.locator('#host-rows tr[data-name="' + name + '"]');
  const reaches = (name, status) => page.locator('#host-rows tr[data-name="' + name + '"][data-status="' + status + '"]').waitFor({ timeout: 60000 });
  const leaks = secret => leaksIn(page, secret);

  await signIn(ui);
  await page.click('nav a[data-view="hosts"]');
  await page.waitForSelector('#view-hosts:not([hidden])');
  check(/#\/hosts$/.test(page.url()), 'the view has its address: ' + page.url());
  await page.evaluate(() => { window.__sameDocument = true; });
  await page.locator('#host-rows', { hasText: 'No hosts yet' }).waitFor();

  // By password, with the host key given and two labels: probed, available, without a reload.
  await page.click('#new-host summary');
  check(await page.locator('#hf-password').isHidden(), 'a private key by default: no password field yet');
  await page.fill('#hf-name', 'gpu-good');
  await page.fill('#hf-address', '127.0.0.1');
  await page.fill('#hf-port', port);
  await page.fill('#hf-user', user);
  await page.check('input[name="auth_kind"][value="password"]');
  check(await page.locator('#hf-key').isHidden(), 'the key box goes when password is chosen');
  await page.fill('#hf-password', password);
  await page.fill('#hf-host-key', hostKey);
  await page.fill('#hf-labels', 'rack=a, zone=lab');
  await page.click('#host-submit');
  await row('gpu-good').waitFor();
  check(!(await page.locator('#new-host').evaluate(d => d.open)), 'the form folds away once the host is added');
  check(await page.inputValue('#hf-password') === '', 'the password field is cleared');
  check(await leaks(password) === 0, 'the password is nowhere in the page once sent');
  await reaches('gpu-good', 'available');
  const good = row('gpu-good');
  const goodId = await good.getAttribute('data-host');
  const os = (await good.locator('.host-os').textContent()).trim();
  check(os.length > 0 && os !== '—', 'the probe\'s OS shown: ' + os);
  check((await good.locator('.host-disk').textContent()).endsWith('GB free'), 'the free disk shown');
  check(/systemd/.test(await good.locator('.host-systemd').textContent()), 'whether it runs systemd shown');
  check((await good.locator('.host-gpus').textContent()).trim().length > 0, 'its GPUs (or none) shown');
  const shownFingerprint = (await good.locator('td[data-label="Host key"]').textContent()).trim();
  check(shownFingerprint.startsWith('SHA256:'), 'a SHA256 fingerprint shown: ' + shownFingerprint);
  check(shownFingerprint === fingerprint, 'the fingerprint of the given host key: ' + shownFingerprint + ' vs ' + fingerprint);
  check((await good.locator('td[data-label="Address"]').textContent()) === '127.0.0.1:' + port, 'address:port shown');
  check((await good.locator('.host-auth').textContent()) === 'password', 'the auth kind shown');
  check((await good.locator('.host-labels').textContent()) === 'rack=a, zone=lab', 'its labels shown');
  await ui.shot('available');

  // By private key, at a port nothing listens on: an error, with the reason shown.
  await page.click('#new-host summary');
  check(await page.locator('input[name="auth_kind"][value="private_key"]').isChecked(), 'the form starts over with a private key');
  await page.fill('#hf-name', 'gpu-bad');
  await page.fill('#hf-address', '127.0.0.1');
  await page.fill('#hf-port', '1');
  await page.fill('#hf-user', user);
  await page.fill('#hf-key', key);
  await page.click('#host-submit');
  await row('gpu-bad').waitFor();
  check(await page.inputValue('#hf-key') === '', 'the key box is cleared');
  check(await leaks(keyBody) === 0, 'the private key is nowhere in the page once sent');
  await reaches('gpu-bad', 'error');
  const reason = (await row('gpu-bad').locator('.host-reason').textContent()).trim();
  check(reason.length > 0, 'the reason of the error shown');
  check((await row('gpu-bad').locator('.host-auth').textContent()) === 'private key', 'the auth kind shown');
  await ui.shot('error');

  // No name: the API's 422 next to the name field; nothing added.
  const before = (await admin(ui, 'GET', '/admin/hosts')).hosts.length;
  await page.click('#new-host summary');
  await page.fill('#hf-address', '127.0.0.1');
  await page.fill('#hf-user', user);
  await page.check('input[name="auth_kind"][value="password"]');
  await page.fill('#hf-password', 'typed-but-not-sent');
  await page.click('#host-submit');
  const nameError = page.locator('#host-form [data-error-for="name"]');
  await page.waitForFunction(() => document.querySelector('#host-form [data-error-for="name"]').textContent.length > 0);
  check((await nameError.textContent()).includes('name'), 'the message names the field: ' + await nameError.textContent());
  check(await page.evaluate(() => document.activeElement && document.activeElement.id) === 'hf-name', 'the name field has the focus');
  check((await admin(ui, 'GET', '/admin/hosts')).hosts.length === before, 'nothing added');
  await ui.shot('form-error');
  await page.fill('#hf-name', 'x');
  check(await nameError.textContent() === '', 'the error goes once the name is edited');
  // Leaving the view wipes what was typed as a credential.
  await page.click('nav a[data-view="fleet"]');
  await page.waitForSelector('#view-fleet:not([hidden])');
  check(await page.inputValue('#hf-password') === '', 'the unsent password is wiped on leaving the view');
  await page.click('nav a[data-view="hosts"]');
  await reaches('gpu-good', 'available');

  // Probe again: probed anew, available again.
  const updated = await row('gpu-good').getAttribute('data-updated');
  await row('gpu-good').locator('button:has-text("Probe again")').click();
  await page.waitForFunction(([name, before]) => {
    const r = document.querySelector('#host-rows tr[data-name="' + name + '"]');
    return r && r.dataset.status === 'available' && r.dataset.updated !== before;
  }, ['gpu-good', updated], { timeout: 60000 });

  // Its events, under its row: added, probing, probed (twice now).
  const toggle = row('gpu-good').locator('button[aria-label="Events of gpu-good"]');
  await toggle.click();
  const events = page.locator('#host-rows tr.host-events[data-host-events="' + goodId + '"]');
  await events.locator('li[data-kind="probed"]').first().waitFor();
  await page.waitForFunction(id => document.querySelectorAll('#host-rows tr[data-host-events="' + id + '"] li[data-kind="probed"]').length === 2, goodId);
  for (const kind of ['added', 'probing']) check(await events.locator('li[data-kind="' + kind + '"]').count() > 0, 'a ' + kind + ' event listed');
  check((await events.locator('li[data-kind="probed"]').first().textContent()).includes('probed'), 'the probe\'s summary shown');
  check(await row('gpu-good').locator('button[aria-label="Events of gpu-good"]').getAttribute('aria-expanded') === 'true', 'the toggle says it is open');
  await ui.shot('events');

  // Remove asks first; confirmed, the bad host goes away and the good one stays.
  await row('gpu-bad').locator('button:has-text("Remove")').click();
  await page.waitForSelector('#confirm-dialog[open]');
  await page.click('#confirm-yes');
  await row('gpu-bad').waitFor({ state: 'detached', timeout: 30000 });
  check(await row('gpu-good').count() === 1, 'the good host stays');
  check(await events.count() === 1, 'its events stay open');
  check(await page.evaluate(() => window.__sameDocument === true), 'all of it without a reload');
  await ui.shot('after-remove');

  // A phone-sized screen: nothing overflows sideways.
  await checkPhoneWidth(ui);
  await ui.shot('phone');
  await ui.close();
});
