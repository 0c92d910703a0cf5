// The console's second-factor step (SPEC §11) in headless Chromium: a user
// enrolled with `tessera useradd --totp` logs in; the page shows the code
// field only when the server answers mfa_required, says so on a wrong code,
// and connects with a right one. Codes come from `oathtool` (Debian package,
// installed by .ci/run), never from tessera.
//
//   cargo build --release
//   cd tests/browser && npm ci && node --test
//
// TESSERA_BIN and CHROMIUM_BIN as in console.test.mjs. A watchdog ends the
// run (server included) after two minutes.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = process.env.TESSERA_BIN || path.join(ROOT, 'target/release/tessera');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const SHOTS = path.join(ROOT, 'target/browser-screenshots');
const WAIT = 15_000;

let server; // { child, base, stderr }
let browser;
let dir;

const watchdog = setTimeout(() => {
  console.error('mfa browser test: watchdog fired after 120 s; stopping');
  server?.child.kill('SIGKILL');
  process.exit(1);
}, 120_000);
watchdog.unref();
process.on('exit', () => server?.child.kill('SIGKILL'));

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

function startServer(users) {
  return new Promise((resolve, reject) => {
    const args = ['serve', '--insecure-cookies', '--listen', '127.0.0.1:0', '--users', users, '--mfa-min-clearance', '3'];
    const child = spawn(BIN, args, {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, TESSERA_SECRET: 'mfa-browser-test-key-0123456789abcdefghijkl' },
    });
    const s = { child, stderr: [] };
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${BIN} did not start within 20 s:\n${s.stderr.join('\n')}`));
    }, 20_000);
    let buf = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      buf += chunk;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        s.stderr.push(line);
        try {
          const e = JSON.parse(line);
          if (e.event === 'listening') {
            clearTimeout(timer);
            s.base = `http://127.0.0.1:${Number(e.addr.split(':').pop())}`;
            resolve(s);
          }
        } catch {
          // not JSON
        }
      }
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${BIN}: ${e.message}`));
    });
  });
}

const noteText = (page) => page.evaluate(() => document.getElementById('login-note').textContent);

describe('console second factor in headless Chromium', { timeout: 110_000 }, () => {
  let secret;

  before(async () => {
    fs.mkdirSync(SHOTS, { recursive: true });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-mfa-browser-'));
    const users = path.join(dir, 'users');
    secret = enrol(users, 'field-1', 'field-pass');
    server = await startServer(users);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-quic', '--disable-sync'],
      timeout: 30_000,
    });
  });

  after(async () => {
    await browser?.close().catch(() => {});
    server?.child.kill('SIGTERM');
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    clearTimeout(watchdog);
  });

  it('asks for the code after the right password, refuses a wrong one, connects with the right one', async () => {
    const page = await browser.newPage();
    page.setDefaultTimeout(WAIT);
    const problems = [];
    page.on('pageerror', (e) => problems.push(e.message));
    page.on('console', (m) => {
      if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) problems.push(m.text());
    });
    await page.goto(server.base + '/');
    assert.equal(await page.locator('#otp-row').isVisible(), false, 'no code field before the server asks');

    await page.fill('#login-form input[name=username]', 'field-1');
    await page.fill('#login-form input[name=password]', 'field-pass');
    await page.click('#login-form button');
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
    await page.waitForFunction(() => document.getElementById('status').textContent.includes('connected as field-1'));
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
