// The playground page in a real headless browser (Debian's chromium, driven by playwright-core,
// nothing downloaded) against a real stack (edge, Redis, a worker on a tiny model): make a
// session, chat with a streamed reply, see the versions as a tree, fork, export a version and
// import it back, build a cartridge and start a session from it, with no script error and no
// Content-Security-Policy violation. (README's screenshot: tools/docs/playground-screenshot.ts.)
// Skips, saying so, where no chromium is installed (.ci/run installs it).
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMStateHeader } from '../shared/mstate.ts';
import { useRedisServer } from '../test-support/redis.ts';
import { startTestServing, type TestServing } from '../test-support/serving.ts';
import { writeTinyModel, type TinyModel } from '../test-support/tiny-model.ts';

const CHROMIUM = process.env['CHROMIUM_PATH'] ?? ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
const available = CHROMIUM !== undefined && existsSync(CHROMIUM);
const title = (t: string) => (available ? t : `${t} — skipped: no chromium (apt-get install chromium, or set CHROMIUM_PATH)`);

const redis = useRedisServer();
let model: TinyModel;
let serving: TestServing;
let browser: Browser;
let dir: string;

beforeAll(async () => {
  if (!available) return;
  model = await writeTinyModel();
  serving = await startTestServing({ redisUrl: redis().url, modelDir: model.dir });
  dir = await mkdtemp(join(tmpdir(), 'ms-pg-'));
  browser = await chromium.launch({
    executablePath: CHROMIUM!,
    // Root in a container needs --no-sandbox; the rest keep Chromium off the (closed) network.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}, 120_000);
afterAll(async () => {
  await browser?.close();
  await serving?.stop();
  await model?.remove();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function openPage(): Promise<{ page: Page; problems: string[] }> {
  const page = await browser.newPage({ acceptDownloads: true, viewport: { width: 1280, height: 760 } });
  const problems: string[] = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  await page.goto(`${serving.url}/`);
  // Polled from outside the page: a predicate evaluated in it would need 'unsafe-eval', which its CSP forbids.
  await expect.poll(() => page.textContent('#status'), { timeout: 30_000 }).toBe('ready');
  return { page, problems };
}

describe.skipIf(!available)(title('the playground page'), () => {
  it('chat with a streamed reply, versions, fork, export, import, cartridges', async () => {
    const { page, problems } = await openPage();
    await expect.poll(() => page.textContent('#model')).toContain('tiny');

    await page.click('#new');
    await expect.poll(() => page.textContent('#title')).not.toBe('no session open');
    const session = (await page.textContent('#title'))!;
    await page.fill('#input', 'hello there');
    await page.press('#input', 'Enter');
    await page.waitForSelector('.meta');
    expect(await page.locator('.msg.user').first().textContent()).toBe('hello there');
    expect((await page.locator('.msg.assistant').first().textContent())!.length).toBeGreaterThan(0);
    expect(await page.textContent('.meta')).toMatch(/^v1 · \d+ tokens out/);
    await page.fill('#input', 'and again');
    await page.press('#input', 'Enter');
    await expect.poll(() => page.locator('.meta').count()).toBe(2);
    await expect.poll(() => page.locator('.version').count()).toBe(3); // v0, v1, v2
    expect(await page.textContent('.version.head')).toMatch(/v2 \(head\) · turn/);
    expect(await page.locator(`li.session.active b`).textContent()).toBe(session);

    // Fork from v1: a new session opens; its tree starts from a fork of v1.
    await page.locator('.version[data-version="1"] button', { hasText: 'fork' }).click();
    await expect.poll(() => page.textContent('#title')).not.toBe(session);
    await expect.poll(() => page.textContent('#versions')).toContain('fork');
    const forked = (await page.textContent('#title'))!;

    // Export v1 of the fork, import it back as a new session.
    const [download] = await Promise.all([page.waitForEvent('download'), page.locator('.version.head button', { hasText: 'export' }).click()]);
    const file = join(dir, download.suggestedFilename());
    await download.saveAs(file);
    expect(download.suggestedFilename()).toMatch(new RegExp(`^${forked}-v\\d+\\.mstate$`));
    expect(readMStateHeader(new Uint8Array(await readFile(file))).header.tokens_absorbed).toBeGreaterThan(0);
    await page.setInputFiles('#import', file);
    await expect.poll(() => page.textContent('#status')).toMatch(/^imported .* into /);
    await expect.poll(() => page.textContent('#versions')).toContain('import');

    // A cartridge, built and started from.
    await page.fill('#cartridge-name', 'handbook');
    await page.fill('#cartridge-text', 'The office opens at nine. The code of the side door is 4812.');
    await page.click('#build');
    await page.locator('li.cartridge', { hasText: 'handbook' }).locator('button', { hasText: 'new session from it' }).click({ timeout: 30_000 });
    await expect.poll(() => page.textContent('#versions')).toContain('cartridge');

    expect(problems).toEqual([]);
    await page.close();
  });

  it('is served with a Content-Security-Policy that lets only its own script run', async () => {
    const res = await fetch(`${serving.url}/`);
    expect(res.headers.get('content-type')).toMatch(/^text\/html/);
    const csp = res.headers.get('content-security-policy')!;
    expect(csp).toMatch(/default-src 'none'/);
    expect(csp).toMatch(/script-src 'sha256-[A-Za-z0-9+/=]+'/);
    expect(csp).toMatch(/connect-src 'self'/);
  });

  it('asks for the API key when the server has keys, and works with it', async () => {
    const keyed = await startTestServing({ redisUrl: redis().url, modelDir: model.dir, env: { API_KEYS: 'playground-key-1:alpha' } });
    try {
      const page = await browser.newPage();
      await page.goto(`${keyed.url}/`);
      await page.waitForSelector('#key-box:not([hidden])');
      await expect.poll(() => page.textContent('#error')).toMatch(/needs an API key/);
      await page.fill('#key', 'playground-key-1');
      await page.dispatchEvent('#key', 'change');
      // Polled from outside the page: a predicate evaluated in it would need 'unsafe-eval', which its CSP forbids.
  await expect.poll(() => page.textContent('#status'), { timeout: 30_000 }).toBe('ready');
      await page.click('#new');
      await expect.poll(() => page.locator('li.session').count()).toBe(1);
      await page.close();
    } finally {
      await keyed.stop();
    }
  });
});
