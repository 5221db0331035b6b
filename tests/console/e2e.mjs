// Drives Debian's chromium (headless, playwright-core) through agentgate's web console.
// Input: one JSON object in E2E (console URL, the provider's URL, approval ids, output folder).
// Output: one JSON line of what it saw; exits 1 on the first failed expectation.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const cfg = JSON.parse(process.env.E2E);
const out = cfg.out;
mkdirSync(out, { recursive: true });
const seen = {};

function expect(ok, what) {
  if (!ok) throw new Error(`expectation failed: ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});

async function signIn(account) {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  await page.goto(`${cfg.console}/console/`);
  // Not signed in: sent to the provider's sign-in page.
  await page.waitForURL((u) => u.href.startsWith(cfg.issuer), { timeout: 15000 });
  await page.fill('input[name="login"]', account);
  await page.fill('input[name="password"]', 'any password');
  if (account === 'alice') await page.screenshot({ path: `${out}/01-provider-sign-in.png` });
  await page.click('button[type="submit"]');
  // Consent, if the provider asks.
  const consent = page.locator('button[type="submit"]');
  await page.waitForURL((u) => u.href.startsWith(cfg.console) || u.href.includes('/interaction/'), { timeout: 15000 });
  if (page.url().includes('/interaction/')) await consent.click();
  await page.waitForURL(`${cfg.console}/console/`, { timeout: 15000 });
  await page.waitForSelector('#me:not(:empty)');
  return { ctx, page };
}

try {
  // Nothing for a visitor without a session.
  {
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
    const r = await ctx.request.get(`${cfg.console}/v1/approvals?state=pending`);
    seen.anonymous_api = r.status();
    expect(r.status() === 401, 'the API refuses a request without a session');
    const s = await ctx.request.get(`${cfg.console}/v1/sessions`);
    expect(s.status() === 401, 'sessions refuse a request without a session');
    const me = await ctx.request.get(`${cfg.console}/console/api/me`);
    expect(me.status() === 401, 'no identity without a session');
    await ctx.close();
  }

  // An approver signs in and sees both held requests, live.
  const { ctx, page } = await signIn('alice');
  seen.me = await page.textContent('#me');
  expect(seen.me.includes('alice') && seen.me.includes('security-oncall'), 'groups from the ID token');
  const cardA = page.locator(`article[data-id="${cfg.approval_a}"]`);
  await cardA.waitFor({ timeout: 15000 });
  await page.locator(`article[data-id="${cfg.approval_b}"]`).waitFor({ timeout: 15000 });
  seen.card_a = await cardA.textContent();
  expect(seen.card_a.includes(cfg.rule_a) && seen.card_a.includes(cfg.summary_a), 'the card shows the rule and the message');
  expect(seen.card_a.includes('test-agent'), 'the card shows the requester');
  expect(!seen.card_a.includes('ann.lee@example.com'), 'the card is masked');
  await page.screenshot({ path: `${out}/02-approvals-pending.png`, fullPage: true });

  // CSRF: a POST with the session cookie but without the token is refused...
  const noToken = await ctx.request.post(`${cfg.console}/v1/approvals/${cfg.approval_b}/approve`, { data: { reason: 'csrf' } });
  seen.post_without_csrf = noToken.status();
  expect(noToken.status() === 403, 'a POST without the CSRF token is refused');
  // ...and so is a cross-site form post from another origin (the provider's pages), cookie and all.
  const other = await ctx.newPage();
  await other.goto(`${cfg.issuer}/.well-known/openid-configuration`);
  seen.cross_site = await other.evaluate(async (url) => {
    try {
      await fetch(url, { method: 'POST', mode: 'no-cors', credentials: 'include', headers: { 'content-type': 'text/plain' }, body: '{"reason":"forged"}' });
      return 'sent';
    } catch (e) {
      return `error ${e.message}`;
    }
  }, `${cfg.console}/v1/approvals/${cfg.approval_b}/approve`);
  await other.close();

  // Approve A with a reason.
  await cardA.locator('textarea').fill('change CHG-42 is planned');
  await cardA.getByRole('button', { name: /^Approve/ }).click();
  await cardA.waitFor({ state: 'detached', timeout: 15000 });
  await page.locator('#decided tr', { hasText: 'approved' }).first().waitFor({ timeout: 15000 });
  seen.decided = await page.textContent('#decided');
  expect(seen.decided.includes('alice') && seen.decided.includes('change CHG-42 is planned'), 'decided list shows who and why');
  await page.screenshot({ path: `${out}/03-approvals-decided.png`, fullPage: true });

  // Sessions: the approved exchange shows up (the agent's streamed call completed) with its
  // decision trail, its conversation, and a replay of its recorded stream.
  await page.click('#tab-sessions');
  const firstRow = page.locator('#session-rows tr.clickable').first();
  for (let i = 0; i < 50; i++) {
    await page.click('#search button[type="submit"]');
    await page.waitForTimeout(200);
    if ((await page.locator(`#session-rows tr[data-id]`).count()) >= cfg.min_sessions) break;
  }
  await firstRow.click();
  await page.waitForSelector('#exchange:not([hidden]) h2');
  seen.approved_exchange = await page.textContent('#exchange');
  expect(seen.approved_exchange.includes('approved by alice: change CHG-42 is planned'), 'the decision trail names the approver');
  expect(seen.approved_exchange.includes(cfg.stream_text), 'the streamed reply is reassembled');
  expect((await page.locator('#exchange .msg.user').textContent()).includes(cfg.summary_a), "the agent's message is rendered");
  expect(seen.approved_exchange.includes('TLSv1.'), 'TLS evidence of both legs');
  await page.screenshot({ path: `${out}/04-session-approved.png`, fullPage: true });

  // Its stream, replayed with its timing.
  await page.waitForSelector('#replay');
  await page.selectOption('select[aria-label="Replay speed"]', '4');
  await page.click('#replay');
  await page.waitForSelector('pre[data-done="true"]', { timeout: 20000 });
  seen.replayed = await page.textContent('pre[data-done="true"]');
  expect(seen.replayed === cfg.stream_text, `the replay renders the stream (${seen.replayed})`);
  await page.screenshot({ path: `${out}/05-session-replay.png`, fullPage: true });

  // Usage: the model call that went through, summed by identity, then by model (this replica's).
  if (cfg.check_usage !== false) {
    await page.click('#tab-usage');
    await page.waitForSelector(`#usage-rows tr[data-key="${cfg.usage_identity}"]`);
    seen.usage = await page.textContent('#usage-rows');
    await page.selectOption('#u-by', 'model');
    await page.click('#usage-form button[type="submit"]');
    await page.waitForSelector(`#usage-rows tr[data-key="${cfg.usage_model}"]`);
    expect((await page.textContent('#u-key')) === 'Model', 'the usage table is keyed by model');
  }

  // Phone width.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: `${out}/06-phone-session.png`, fullPage: true });
  await page.click('#tab-approvals');
  await page.locator(`article[data-id="${cfg.approval_b}"]`).waitFor();
  await page.screenshot({ path: `${out}/07-phone-approvals.png`, fullPage: true });

  // Every control has an accessible name.
  seen.unlabelled = await page.evaluate(() => [...document.querySelectorAll('button, input, select, textarea')]
    .filter((e) => !(e.getAttribute('aria-label') || e.labels?.length || e.textContent.trim())).map((e) => e.outerHTML));
  expect(seen.unlabelled.length === 0, `unlabelled controls: ${seen.unlabelled}`);

  // Sign out: the session cookie no longer works.
  await page.click('#signout');
  await page.waitForURL(`${cfg.console}/console/signed-out`);
  await page.screenshot({ path: `${out}/08-signed-out.png` });
  const after = await ctx.request.get(`${cfg.console}/v1/approvals`);
  seen.after_sign_out = after.status();
  expect(after.status() === 401, 'signed out');
  await ctx.close();

  // An auditor outside the approver group sees B read-only.
  const eve = await signIn('eve');
  const cardB = eve.page.locator(`article[data-id="${cfg.approval_b}"]`);
  await cardB.waitFor({ timeout: 15000 });
  seen.card_b_readonly = await cardB.textContent();
  expect(seen.card_b_readonly.includes('Read-only'), 'read-only for a non-approver');
  expect((await cardB.getByRole('button', { name: /^Approve/ }).count()) === 0, 'no approve button for a non-approver');
  await eve.page.screenshot({ path: `${out}/09-approvals-read-only.png`, fullPage: true });
  await eve.ctx.close();
  seen.ok = true;
} catch (e) {
  seen.error = String(e && e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
process.exit(seen.ok ? 0 : 1);
