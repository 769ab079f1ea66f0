// README's screenshot of the playground (docs/playground.png): the local stack with the demo
// model, a cartridge built, a session of three turns, a fork of its first version, in headless
// Debian chromium.   npx tsx tools/docs/playground-screenshot.ts
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startLocalStack } from '../../stack/local-stack.ts';
import { REPO_ROOT } from '../../stack/service-process.ts';
import { testStackEnv } from '../../stack/test-stack-env.ts';
const dataDir = await mkdtemp(join(tmpdir(), 'ms-shot-'));
const stack = await startLocalStack({ env: testStackEnv(dataDir, { MODEL_DIR: join(REPO_ROOT, 'models', 'demo'), MODEL_ID: 'demo', LOG_LEVEL: 'warn' }) });
const browser = await chromium.launch({ executablePath: process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'] });
const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
await page.goto(`${stack.url}/`);
while ((await page.textContent('#status')) !== 'ready') await page.waitForTimeout(100);
await page.fill('#cartridge-name', 'office handbook');
await page.fill('#cartridge-text', 'The office opens at nine. The code of the side door is 4812.');
await page.click('#build');
await page.click('#new');
while ((await page.textContent('#title')) === 'no session open') await page.waitForTimeout(100);
for (const m of ['My locker code is 4812.', 'The meeting moved to Tuesday.', 'What is my locker code?']) {
  const n = await page.locator('.meta').count();
  await page.fill('#input', m);
  await page.press('#input', 'Enter');
  while ((await page.locator('.meta').count()) <= n) await page.waitForTimeout(100);
}
await page.locator('.version[data-version="1"] button', { hasText: 'fork' }).click();
await page.waitForTimeout(500);
await page.locator('li.session').last().click();
await page.waitForTimeout(500);
await page.screenshot({ path: join(REPO_ROOT, 'docs', 'playground.png') });
await browser.close();
await stack.stop();
