// The Usage view shows what /admin/usage answers, for the period the page asked for: the totals
// (the requests the test sent, the tokens, and dollars since a priced node runs); a chart with one
// bar group per bucket whose tokens add up to the total and a cost line above zero; the groups in a
// table, echo/one with its requests, its dollars and its price now. Another period redraws the
// chart; grouping by API key re-renders the table (one row: no key was sent, and no $/hour column);
// the view reloads by itself; a period without traffic draws a flat chart with a note; a phone
// gets a narrower chart and no sideways scrolling.
'use strict';
const { open, signIn, admin, check, main, checkPhoneWidth } = require('./lib.cjs');

const env = name => {
  const v = process.env[name];
  if (!v) throw new Error(name + ' is not set (tests/ui_browser.rs sets it)');
  return v;
};

main(async () => {
  const ui = await open();
  const { page } = ui;
  const sent = Number(env('SKYLAUNCH_UI_REQUESTS'));
  const count = n => n.toLocaleString('en-US');
  const money = usd => usd === 0 ? '$0.00' : '$' + usd.toLocaleString('en-US', { minimumFractionDigits: usd < 1 ? 4 : 2, maximumFractionDigits: usd < 1 ? 4 : 2 });
  const dollars = text => Number(text.replace(/[$,]/g, ''));
  const chart = page.locator('svg[data-chart="usage"]');
  // The report the page shows: asked again for the same period and grouping.
  const shown = async () => {
    const [from, to, groupBy] = await Promise.all(['data-from', 'data-to', 'data-group-by'].map(a => chart.getAttribute(a)));
    return admin(ui, 'GET', '/admin/usage?' + new URLSearchParams({ from, to, group_by: groupBy }));
  };
  const bars = () => page.$$eval('svg[data-chart="usage"] g[data-bucket]', gs => gs.map(g => ({ start: g.dataset.bucket, tokens: Number(g.dataset.tokens) })));
  const costs = () => page.$$eval('svg[data-chart="usage"] [data-usd]', cs => cs.map(c => Number(c.dataset.usd)));
  const row = group => page.locator('#usage-rows tr[data-group="' + group + '"]');
  const cell = (group, label) => row(group).locator('td[data-label="' + label + '"]');
  const total = name => page.locator('#usage-totals [data-total="' + name + '"]');
  // The bars are the answer's series, bucket by bucket, and add up to its tokens.
  const checkChart = async (report, what) => {
    const drawn = await bars();
    check(drawn.length === report.series.points.length, what + ': a bar group per bucket: ' + drawn.length + ' vs ' + report.series.points.length);
    check(drawn.every((b, i) => b.start === report.series.points[i].start), what + ': the buckets in order');
    const tokens = drawn.reduce((s, b) => s + b.tokens, 0);
    check(tokens === report.total.prompt_tokens + report.total.completion_tokens, what + ': the bars add up to the total tokens: ' + tokens);
    check((await costs()).length === drawn.length, what + ': a cost point per bucket');
  };

  await signIn(ui);
  await page.click('nav a[data-view="usage"]');
  await page.waitForSelector('#view-usage:not([hidden])');
  check(/#\/usage$/.test(page.url()), 'the view has its address: ' + page.url());
  check(await page.locator('nav a[data-view="usage"]').getAttribute('aria-current') === 'page', 'the nav shows where we are');
  await page.evaluate(() => { window.__sameDocument = true; });
  check((await page.textContent('#usage-how')).includes("Tokens from the model servers' own usage; dollars from each replica's placement price (spot or on-demand) while it runs."), 'where the figures come from is said');
  check(await page.inputValue('#usage-period') === '86400' && await page.inputValue('#usage-group') === 'model', 'the last 24 hours, by model, by default');

  // Totals: the requests the test sent, and dollars since the priced node runs.
  await chart.waitFor();
  await row('echo/one').waitFor();
  const day = await shown();
  check(day.group_by === 'model', 'grouped by model');
  check(day.total.requests === sent, 'the API counts what the test sent: ' + day.total.requests);
  check((await total('requests').locator('strong').textContent()) === count(sent), 'the requests shown: ' + await total('requests').textContent());
  const tokensText = await total('tokens').textContent();
  check(tokensText === count(day.total.prompt_tokens) + ' prompt + ' + count(day.total.completion_tokens) + ' completion tokens', 'the tokens shown: ' + tokensText);
  check(day.total.prompt_tokens > 0 && day.total.completion_tokens > 0, 'the echo server reported tokens');
  check(dollars(await total('usd').textContent()) > 0, 'dollars shown: ' + await total('usd').textContent());
  check(/^\$[\d,.]+ per million tokens$/.test(await total('usd_per_million_tokens').textContent()), 'dollars per million tokens shown: ' + await total('usd_per_million_tokens').textContent());
  check((await total('hourly_usd').textContent()) === 'now: ' + money(day.total.hourly_usd) + '/hour', 'the price now: ' + await total('hourly_usd').textContent());
  check(day.total.hourly_usd === 0.8, 'an on-demand L4 costs $0.80 an hour, the local replica nothing: ' + day.total.hourly_usd);

  // The chart: a bar group per bucket adding up to the tokens; cost above zero; labelled.
  await checkChart(day, 'last 24 hours');
  check((await costs()).some(usd => usd > 0), 'a cost point above zero');
  check(await chart.getAttribute('role') === 'img', 'the chart is an image to assistive technology');
  const label = await chart.getAttribute('aria-label');
  check(label.includes('per hour over the last 24 hours') && label.includes(count(day.total.prompt_tokens + day.total.completion_tokens) + ' tokens'), 'its label sums it up: ' + label);
  check(await page.locator('svg[data-chart="usage"] g[data-bucket] title').count() === day.series.points.length, 'each bar has its numbers as a tooltip');
  const busy = await page.$$eval('svg[data-chart="usage"] g[data-bucket]:not([data-tokens="0"])', gs => gs.map(g => ({ start: g.dataset.bucket, title: g.querySelector('title').textContent })));
  check(busy.length > 0, 'a bar with tokens');
  for (const bar of busy) {
    const p = day.series.points.find(p => p.start === bar.start);
    check(bar.title.includes(count(p.prompt_tokens) + ' prompt + ' + count(p.completion_tokens) + ' completion tokens, ' + count(p.requests) + ' requests'),
      'a bar\'s tooltip gives its numbers: ' + bar.title);
  }
  check(await page.locator('svg[data-chart="usage"] .chart-x text').count() <= 7, 'a few time labels, not one per bucket');
  check(await page.locator('.chart-legend li').count() === 3, 'a legend');
  check(await page.locator('svg[data-chart="usage"] .chart-note').count() === 0, 'no "no traffic" note');

  // The table: echo/one with the API's requests, its dollars and its price now.
  const echo = day.usage.find(g => g.group === 'echo/one');
  check(echo && echo.requests === sent, 'the API groups the requests under echo/one: ' + JSON.stringify(day.usage));
  check((await cell('echo/one', 'Requests').textContent()) === count(echo.requests), 'its requests shown');
  check((await cell('echo/one', 'Prompt tokens').textContent()) === count(echo.prompt_tokens), 'its prompt tokens shown');
  check(dollars(await cell('echo/one', '$').textContent()) > 0, 'its dollars shown: ' + await cell('echo/one', '$').textContent());
  check((await cell('echo/one', '$/hour now').textContent()) === money(0.8), 'its price now shown: ' + await cell('echo/one', '$/hour now').textContent());
  check(await page.locator('#usage-head th').count() === 8, 'a $/hour column for models');
  await ui.shot('by-model');

  // The last hour: minute buckets, redrawn.
  const dayFrom = await chart.getAttribute('data-from');
  await page.selectOption('#usage-period', '3600');
  await page.waitForFunction(f => { const s = document.querySelector('svg[data-chart="usage"]'); return s && s.dataset.from !== f; }, dayFrom);
  const hour = await shown();
  check(hour.series.bucket_s === 60 && hour.series.points.length === 60, 'the last hour in 60 minutes: ' + hour.series.bucket_s + ' s × ' + hour.series.points.length);
  await checkChart(hour, 'last hour');
  check((await chart.getAttribute('aria-label')).includes('per minute over the last hour'), 'its label follows');
  await ui.shot('last-hour');

  // By API key: one row, for requests without a key; no $/hour column.
  await page.selectOption('#usage-group', 'key');
  await row('(environment or open)').waitFor();
  check(await row('echo/one').count() === 0, 'the model rows are gone');
  const byKey = await shown();
  check(byKey.group_by === 'key', 'the page asked by key');
  check(byKey.usage.length === 1 && byKey.usage[0].group === '(environment or open)', 'one group without a key: ' + JSON.stringify(byKey.usage));
  check(await page.locator('#usage-rows tr').count() === 1, 'one row');
  check((await cell('(environment or open)', 'Requests').textContent()) === count(sent), 'its requests shown');
  check(dollars(await cell('(environment or open)', '$').textContent()) > 0, 'the model\'s cost goes to the requests\' sender');
  check(await page.locator('#usage-head th').count() === 7 && await cell('(environment or open)', '$/hour now').count() === 0, 'no $/hour column for keys');
  await ui.shot('by-key');

  // It reloads by itself while open.
  let asked = 0;
  const counting = request => { if (new URL(request.url()).pathname === '/admin/usage') asked++; };
  page.on('request', counting);
  for (let waited = 0; asked === 0 && waited < 15000; waited += 250) await page.waitForTimeout(250);
  page.off('request', counting);
  check(asked > 0, 'the view asked again within 15 s');

  // A period without traffic: a flat chart with a note (drawn from the answer with its counts
  // and dollars zeroed, checked before the next reload).
  const quiet = await page.evaluate(answer => {
    for (const p of answer.series.points) Object.assign(p, { requests: 0, prompt_tokens: 0, completion_tokens: 0, usd: 0 });
    Object.assign(answer.total, { requests: 0, prompt_tokens: 0, completion_tokens: 0, usd: 0, gpu_hours: 0, usd_per_million_tokens: null });
    answer.usage = [];
    renderUsage(answer);
    const svg = document.querySelector('svg[data-chart="usage"]');
    const heights = [...svg.querySelectorAll('g[data-bucket] rect:not(.hit)')].map(r => Number(r.getAttribute('height')));
    const ys = [...svg.querySelectorAll('[data-usd]')].map(c => c.getAttribute('cy'));
    return { note: (svg.querySelector('.chart-note') || {}).textContent, bars: svg.querySelectorAll('g[data-bucket]').length,
      flat: heights.every(h => h === 0) && new Set(ys).size === 1, label: svg.getAttribute('aria-label'),
      rows: document.querySelector('#usage-rows').textContent, perMillion: document.querySelector('[data-total="usd_per_million_tokens"]').textContent };
  }, hour);
  check(quiet.note === 'No traffic in this period', 'a note says there was no traffic: ' + quiet.note);
  check(quiet.bars === hour.series.points.length && quiet.flat, 'the chart is flat');
  check(quiet.label.includes('no traffic'), 'its label says so: ' + quiet.label);
  check(quiet.rows === 'No usage in this period.', 'the table says so');
  check(quiet.perMillion === '— per million tokens', 'no price per token without tokens: ' + quiet.perMillion);
  await ui.shot('no-traffic');

  // A phone-sized screen: a narrower chart, nothing overflows sideways.
  await page.selectOption('#usage-group', 'model');
  await row('echo/one').waitFor();
  await checkPhoneWidth(ui, () => page.waitForFunction(() => { const s = document.querySelector('svg[data-chart="usage"]'); return s && s.getAttribute('viewBox').startsWith('0 0 420 '); }));
  const fits = await page.evaluate(() => { const r = document.querySelector('svg[data-chart="usage"]').getBoundingClientRect(); return r.right <= document.documentElement.clientWidth && r.left >= 0; });
  check(fits, 'the chart fits the screen');
  await checkChart(await shown(), 'phone');
  check(await page.evaluate(() => window.__sameDocument === true), 'all of it without a reload');
  await ui.shot('phone');
  await ui.close();
});
