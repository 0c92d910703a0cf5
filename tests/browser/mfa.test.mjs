// The console's second-factor step (SPEC §11) in headless Chromium: a user
// enrolled with `tessera useradd --totp` logs in; the page shows the code
// field only when the server answers mfa_required, says so on a wrong code,
// and connects with a right one. Codes come from `oathtool` (Debian package,
// installed by .ci/run), never from tessera.
//
//   cargo build --release
//   cd tests/browser && npm ci && node --test
//
// TESSERA_BIN and CHROMIUM_BIN as in helpers.mjs. A watchdog ends the
// run (server included) after two minutes.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  BIN,
  SHOTS,
  launchBrowser,
  openPage,
  startServer,
  stopServer,
  submitLogin,
  waitStatus,
  watchdog as startWatchdog,
} from './helpers.mjs';

let server; // { child, base, stderr }
let browser;
let dir;

const watchdog = startWatchdog('mfa browser test', 120_000, () => [server]);

/** `tessera useradd --totp`: the base32 secret from the otpauth:// line. */
function enrol(users, name, password) {
  const out = execFileSync(
    BIN,
    ['useradd', '--users', users, '--name', name, '--clearance', '3', '--iterations', '1000', '--totp'],
    { input: password + '\n', encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] },
  );
  const m = /^otpauth:\/\/totp\/tessera:[^?]+\?secret=([A-Z2-7]+)&issuer=tessera$/m.exec(out);
  assert.ok(m, out);
  return m[1];
}

/** The code of `secret` at Unix time `at`, from oathtool. */
function oath(secret, at) {
  return execFileSync('oathtool', ['--totp', '-b', secret, '-N', `@${at}`], { encoding: 'utf8' }).trim();
}

const nowSecs = () => Math.floor(Date.now() / 1000);

/** Waits until at least 4 s remain in the current 30 s step. */
async function settle() {
  while (nowSecs() % 30 >= 26) await new Promise((r) => setTimeout(r, 200));
  return nowSecs();
}

const noteText = (page) => page.evaluate(() => document.getElementById('login-note').textContent);

describe('console second factor in headless Chromium', { timeout: 110_000 }, () => {
  let secret;

  before(async () => {
    fs.mkdirSync(SHOTS, { recursive: true });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-mfa-browser-'));
    const users = path.join(dir, 'users');
    secret = enrol(users, 'field-1', 'field-pass');
    server = await startServer(['--insecure-cookies', '--users', users, '--mfa-min-clearance', '3'], {
      env: { TESSERA_SECRET: 'mfa-browser-test-key-0123456789abcdefghijkl' },
    });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await stopServer(server);
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    clearTimeout(watchdog);
  });

  it('asks for the code after the right password, refuses a wrong one, connects with the right one', async () => {
    const problems = [];
    const page = await openPage(browser, server.base + '/', { problems });
    assert.equal(await page.locator('#otp-row').isVisible(), false, 'no code field before the server asks');

    await submitLogin(page, 'field-1', 'field-pass');
    await page.locator('#otp-row').waitFor({ state: 'visible' });
    assert.match(await noteText(page), /6-digit code/);
    await page.screenshot({ path: path.join(SHOTS, 'mfa-01-code-asked.png') });

    const t = await settle();
    const good = oath(secret, t);
    const wrong = good === '000000' ? '111111' : '000000';
    await page.fill('#login-form input[name=otp]', wrong);
    await page.click('#login-form button');
    await page.waitForFunction(() => /wrong or already used code/.test(document.getElementById('login-note').textContent));
    assert.equal(await page.locator('#otp-row').isVisible(), true);

    await page.fill('#login-form input[name=otp]', good);
    await page.click('#login-form button');
    await waitStatus(page, 'connected as field-1');
    await page.screenshot({ path: path.join(SHOTS, 'mfa-02-connected.png') });

    // The login went through with the code (amr otp), as the server logged.
    const ok = server.stderr.map((l) => JSON.parse(l)).filter((e) => e.event === 'login_ok');
    assert.equal(ok.length, 1);
    const reasons = server.stderr.map((l) => JSON.parse(l)).filter((e) => e.event === 'login_failed').map((e) => e.reason);
    assert.deepEqual(reasons, ['mfa_required', 'invalid_otp']);
    const log = server.stderr.join('\n');
    assert.ok(!log.includes(secret) && !log.includes('field-pass'), 'no secret or password in the log');
    assert.doesNotMatch(log, new RegExp(`(^|\\D)(${good}|${wrong})(\\D|$)`), 'no code in the log');
    assert.deepEqual(problems, []);
  });
});
