// "Is my cloud set up?" in the Launch Instance dialog. The control plane (tests/ui_browser.rs)
// has no cloud credentials and a stand-in `sky` whose `sky check` enables no cloud. The dialog
// lists every provider with its verdict: local ready; SkyPilot, AWS, Azure and SSH not ready,
// each disabled in the provider select with its reason and fix. The operator then enables AWS
// for SkyPilot (the scenario writes the stand-in's `enabled-clouds`, as `aws configure` would)
// and clicks "Check again": SkyPilot becomes ready and can be chosen.
'use strict';
const fs = require('fs');
const path = require('path');
const { open, signIn, check, main, checkPhoneWidth } = require('./lib.cjs');

main(async () => {
  const ui = await open();
  const { page } = ui;
  await signIn(ui);
  const skyState = process.env.SKYLAUNCH_UI_SKY_STATE;
  check(skyState, 'SKYLAUNCH_UI_SKY_STATE is set (tests/ui_browser.rs sets it)');

  await page.click('#open-launch');
  await page.waitForSelector('#launch-dialog[open]');
  // Every provider gets a verdict; the slow ones show "checking…" until theirs arrives.
  await page.waitForSelector('#lf-providers li[data-provider="skypilot"][data-state="not-ready"]', { timeout: 60000 });
  await page.waitForSelector('#lf-providers li[data-provider="aws"][data-state="not-ready"]', { timeout: 60000 });
  const read = () => page.evaluate(() => Object.fromEntries([...document.querySelectorAll('#lf-providers > li')].map(li => [li.dataset.provider, {
    state: li.dataset.state, text: li.textContent,
    option: (() => { const o = document.querySelector('#lf-provider option[value="' + li.dataset.provider + '"]'); return o ? { disabled: o.disabled, text: o.textContent } : null; })(),
  }])));
  let seen = await read();
  check(Object.keys(seen).sort().join(',') === 'aws,azure,local,skypilot,ssh', 'one line per provider: ' + Object.keys(seen));
  check(seen.local.state === 'ready' && !seen.local.option.disabled, 'local is ready and can be chosen: ' + JSON.stringify(seen.local));
  const sky = seen.skypilot;
  check(sky.text.includes('SkyPilot has no cloud enabled'), 'SkyPilot says why: ' + sky.text);
  check(sky.text.includes('aws configure') && sky.text.includes('no_cloud_access'), 'and what to do, with the code: ' + sky.text);
  check(sky.option.disabled && sky.option.text.includes('not ready'), 'SkyPilot cannot be chosen: ' + JSON.stringify(sky.option));
  check(seen.aws.text.includes('No AWS credentials found') && seen.aws.option.disabled, 'AWS says why: ' + seen.aws.text);
  check(seen.azure.text.includes('SKYLAUNCH_AZURE_SUBSCRIPTION_ID'), 'Azure names the settings to set: ' + seen.azure.text);
  check(seen.ssh.text.includes('No SSH host is registered'), 'SSH: ' + seen.ssh.text);
  check(await page.inputValue('#lf-provider') === 'local', 'the dialog chose a provider that can launch');
  // The fix is a click away.
  await page.click('#lf-providers li[data-provider="skypilot"] details summary');
  check(await page.locator('#lf-providers li[data-provider="skypilot"] details li').first().isVisible(), 'the fix is shown');
  await ui.shot('providers-not-ready');

  // The operator sets AWS up for SkyPilot and checks again.
  fs.writeFileSync(path.join(skyState, 'enabled-clouds'), 'aws');
  await page.click('#lf-readiness-refresh');
  await page.waitForSelector('#lf-providers li[data-provider="skypilot"][data-state="ready"]', { timeout: 60000 });
  seen = await read();
  check(seen.skypilot.text.includes('clouds enabled: aws'), 'SkyPilot names its clouds: ' + seen.skypilot.text);
  check(!seen.skypilot.option.disabled && !seen.skypilot.option.text.includes('not ready'), 'SkyPilot can be chosen now');
  await page.selectOption('#lf-provider', 'skypilot');
  check(await page.locator('#lf-gpu').isVisible(), 'its GPU choice is shown');
  await ui.shot('providers-skypilot-ready');
  await checkPhoneWidth(ui, async () => page.locator('#lf-providers').isVisible());
  await ui.close();
});
