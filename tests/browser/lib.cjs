// Shared by the browser scenarios: starts Debian's Chromium headless through playwright-core,
// records console errors and uncaught page errors, and saves screenshots as test artifacts.
// Run by tests/ui_browser.rs, which starts the control plane and passes its address.
'use strict';
const { chromium } = require('playwright-core');
const path = require('path');
const fs = require('fs');

const env = name => {
  const v = process.env[name];
  if (!v) throw new Error(name + ' is not set (tests/ui_browser.rs sets it)');
  return v;
};

let opened = null; // the scenario's browser, for a screenshot if it fails

async function open({ viewport = { width: 1280, height: 860 }, allowErrors = [] } = {}) {
  const browser = await chromium.launch({ executablePath: env('SKYLAUNCH_UI_CHROMIUM'), args: ['--no-sandbox'] });
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(Number(process.env.SKYLAUNCH_UI_TIMEOUT_MS || 30000));
  const problems = [];
  page.on('console', msg => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    if (!allowErrors.some(re => re.test(text))) problems.push('console error: ' + text);
  });
  page.on('pageerror', err => problems.push('uncaught page error: ' + err.message));
  const artifacts = env('SKYLAUNCH_UI_ARTIFACTS');
  fs.mkdirSync(artifacts, { recursive: true });
  const scenario = path.basename(process.argv[1], '.cjs');
  return opened = {
    browser, context, page, base: env('SKYLAUNCH_UI_URL'), token: env('SKYLAUNCH_UI_TOKEN'),
    async shot(name) {
      const file = path.join(artifacts, scenario + '-' + name + '.png');
      await page.screenshot({ path: file, fullPage: true });
      console.log('screenshot: ' + file);
    },
    async close() {
      await browser.close();
      if (problems.length) throw new Error(problems.join('\n'));
    },
  };
}

// Signs in through the start-up link and checks the token leaves the address bar.
async function signIn(ui) {
  await ui.page.goto(ui.base + '/#token=' + encodeURIComponent(ui.token));
  await ui.page.waitForSelector('#view-fleet:not([hidden])');
  const url = ui.page.url();
  if (url.includes(ui.token)) throw new Error('the token stayed in the address bar: ' + url);
}

// Calls the admin API from the test (not from the page).
async function admin(ui, method, route, body) {
  const res = await fetch(ui.base + route, {
    method, headers: { Authorization: 'Bearer ' + ui.token, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(method + ' ' + route + ' -> ' + res.status + ': ' + text);
  return text ? JSON.parse(text) : null;
}

function check(condition, message) { if (!condition) throw new Error(message); }

// On a phone-sized screen, nothing may overflow sideways; `ready` waits for what the view
// redraws at that size first.
async function checkPhoneWidth(ui, ready) {
  await ui.page.setViewportSize({ width: 390, height: 844 });
  if (ready) await ready();
  await ui.page.waitForTimeout(300);
  const overflow = await ui.page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  check(overflow <= 1, 'no sideways scrolling on a phone: ' + overflow + 'px');
}

// How many places in the page a secret lingers in: the address, storage, the markup and every
// field's value.
function leaks(page, secret) {
  return page.evaluate(s => [
    location.href, JSON.stringify(Object.entries(localStorage)), JSON.stringify(Object.entries(sessionStorage)),
    document.documentElement.outerHTML, ...[...document.querySelectorAll('input, textarea')].map(e => e.value),
  ].filter(text => text.includes(s)).length, secret);
}

function main(scenario) {
  scenario().then(() => { console.log('ok'); }, async err => {
    console.error(err && err.stack || err);
    if (opened) {
      // What the page showed when it failed: a screenshot and its visible text.
      try {
        await opened.shot('failure');
        console.error('page at failure (' + opened.page.url() + '):\n' + (await opened.page.innerText('main')).slice(0, 3000));
      } catch (e) { console.error('no failure screenshot: ' + e.message); }
    }
    process.exit(1);
  });
}

module.exports = { open, signIn, admin, check, main, checkPhoneWidth, leaks };
