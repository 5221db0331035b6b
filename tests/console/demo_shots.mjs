// The console of a running `make demo`, in Debian's chromium (headless, playwright-core): signs
// in as alice at the demo's own OpenID provider and takes the README's screenshots.
// Input: one JSON object in E2E: console URL, issuer, output folder, stage, ids.
//   stage "pending": the held tool call's card (approval_id)        -> demo-approval-pending.png
//                    with `approve: REASON`, then approves it on the card with that reason
//   stage "after":   step 1's exchange (masked_id), the approved call (held_id) -> demo-session-masked.png,
//                    demo-session-approved.png
// Output: one JSON line of what it saw; exits 1 on the first failed expectation.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const cfg = JSON.parse(process.env.E2E);
mkdirSync(cfg.out, { recursive: true });
const seen = {};

function expect(ok, what) {
  if (!ok) throw new Error(`expectation failed: ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});

async function signIn() {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  await page.goto(cfg.console);
  await page.waitForURL((u) => u.href.startsWith(cfg.issuer), { timeout: 60000 });
  await page.fill('input[name="login"]', 'alice');
  await page.fill('input[name="password"]', 'any password');
  await page.click('button[type="submit"]');
  await page.waitForURL((u) => u.href.startsWith(cfg.console) || u.href.includes('/interaction/'), { timeout: 60000 });
  if (page.url().includes('/interaction/')) await page.locator('button[type="submit"]').click();
  await page.waitForURL(cfg.console, { timeout: 60000 });
  await page.waitForSelector('#me:not(:empty)');
  return { ctx, page };
}

async function openExchange(page, id) {
  await page.click('#tab-sessions');
  const row = page.locator(`#session-rows tr[data-id="${id}"]`);
  for (let i = 0; i < 50 && (await row.count()) === 0; i++) {
    await page.click('#search button[type="submit"]');
    await page.waitForTimeout(200);
  }
  // The exchange shown before, if any: the new one has replaced it once the text changed.
  const before = await page.evaluate(() => { const x = document.querySelector('#exchange'); return x.hidden ? null : x.textContent; });
  await row.click();
  await page.waitForFunction((prev) => {
    const x = document.querySelector('#exchange');
    return !x.hidden && x.querySelector('h2') && x.textContent !== prev;
  }, before, { timeout: 60000 });
  return page.textContent('#exchange');
}

try {
  const { ctx, page } = await signIn();
  seen.me = await page.textContent('#me');
  expect(seen.me.includes('alice') && seen.me.includes('security-oncall'), 'alice with her groups from the provider');
  if (cfg.stage === 'pending') {
    const card = page.locator(`article[data-id="${cfg.approval_id}"]`);
    await card.waitFor({ timeout: 60000 });
    seen.card = await card.textContent();
    expect(seen.card.includes('MCP tool call') && seen.card.includes('delete_repo({"name":"payments-prod"})'), 'the card shows the tool call');
    expect(seen.card.includes('Delete a repository for good.'), "the card shows what the tool's server says it does");
    expect(seen.card.includes('demo-agent'), 'the card shows the requester');
    await page.screenshot({ path: `${cfg.out}/demo-approval-pending.png` });
    if (cfg.approve) {
      // The approver decides in the console: a reason, then Approve on the tool call's card.
      await card.locator('textarea').fill(cfg.approve);
      await card.getByRole('button', { name: /^Approve/ }).click();
      await card.waitFor({ state: 'detached', timeout: 15000 });
      await page.locator('#decided tr', { hasText: 'approved' }).first().waitFor({ timeout: 15000 });
      seen.decided = await page.textContent('#decided');
      expect(seen.decided.includes('alice') && seen.decided.includes(cfg.approve), 'the decided list shows who and why');
    }
  } else {
    seen.masked = await openExchange(page, cfg.masked_id);
    expect(seen.masked.includes('<EMAIL_1>') && seen.masked.includes('[REDACTED:OPENAI_KEY]'), `the exchange shows what the model got: ${seen.masked}`);
    expect(!seen.masked.includes(cfg.email), 'the exchange never shows the e-mail address');
    await page.screenshot({ path: `${cfg.out}/demo-session-masked.png`, fullPage: true });
    seen.held = await openExchange(page, cfg.held_id);
    expect(seen.held.includes('delete_repo') && seen.held.includes('alice'), 'the tool call shows who approved it');
    await page.screenshot({ path: `${cfg.out}/demo-session-approved.png`, fullPage: true });
  }
  await ctx.close();
  seen.ok = true;
} catch (e) {
  seen.error = String((e && e.stack) || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
process.exit(seen.ok ? 0 : 1);
