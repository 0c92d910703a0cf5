// The console's operations view and presence counts (SPEC §13) in headless
// Chromium against the real `tessera serve --demo` (hq, clearance 5, is an
// operator there; agent-007 is not).
//
//   cargo build --release
//   cd tests/browser && npm ci && node --test
//
// TESSERA_BIN and CHROMIUM_BIN as in helpers.mjs. Screenshots go to
// target/browser-screenshots/; with TESSERA_DOCS_SHOT=1 the operations view
// is also saved as docs/operations.png (the README's picture). Every wait
// has a timeout, and a watchdog ends the run after two minutes.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import {
  ROOT,
  SHOTS,
  WAIT,
  launchBrowser,
  login,
  openPage,
  startServer,
  stopServer,
  watchdog as startWatchdog,
} from './helpers.mjs';

let server; // { child, port, base, passwords, stderr }
let browser;
const problems = []; // CSP violations and script errors

const watchdog = startWatchdog('ops browser tests', 120_000, () => [server]);

/** A failed login from Node (not a browser). */
function badLogin(username) {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({ username, password: 'certainly-wrong' });
    const req = http.request(
      `${server.base}/auth/login`,
      {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) },
        timeout: WAIT,
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      },
    );
    req.on('timeout', () => req.destroy(new Error('login timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

/** An upgrade with a forged token; resolves with the status code. */
function forgedUpgrade() {
  return new Promise((resolve, reject) => {
    const sock = net.connect(server.port, '127.0.0.1');
    let text = '';
    sock.setTimeout(WAIT, () => {
      sock.destroy();
      reject(new Error('upgrade timed out'));
    });
    sock.on('error', reject);
    sock.on('data', (c) => {
      text += c.toString('utf8');
      const m = /^HTTP\/1\.1 (\d{3})/.exec(text);
      if (m) {
        sock.destroy();
        resolve(Number(m[1]));
      }
    });
    sock.write(
      `GET /ws HTTP/1.1\r\nHost: 127.0.0.1:${server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' +
        'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJldmUiLCJleHAiOjk5OTk5OTk5OTl9.AAAA\r\n\r\n',
    );
  });
}

async function consolePage(name) {
  const viewport = { width: 1280, height: 1000 };
  const page = await openPage(browser, server.base + '/', { label: name, problems, viewport });
  await page.waitForSelector('#login-form', { state: 'visible' });
  await login(page, name, server.passwords[name]);
  return page;
}

async function subscribe(page, channel) {
  await page.fill('#sub-form input[name=channel]', channel);
  await page.click('#sub-form button');
  await page.locator('#subs li', { hasText: channel }).waitFor();
}

const rows = (page) => page.locator('#ops-conns tbody tr');
const firstAgent = (page) => page.locator('#ops-conns tbody tr:first-child td:first-child').textContent();

describe('operations view and presence in headless Chromium', { timeout: 110_000 }, () => {
  let hq;
  let agent;

  before(async () => {
    fs.mkdirSync(SHOTS, { recursive: true });
    server = await startServer(['--demo', '--insecure-cookies']);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await stopServer(server);
    clearTimeout(watchdog);
  });

  it('shows an operator the live connections; an agent sees no operations view', async () => {
    hq = await consolePage('hq');
    await hq.locator('#ops').waitFor({ state: 'visible' });
    await subscribe(hq, 'ops');
    agent = await consolePage('agent-007');
    await subscribe(agent, 'ops');
    // Both agents on ops: the presence count next to the channel says 2.
    await agent.locator('#subs li', { hasText: 'ops' }).locator('.presence', { hasText: '2' }).waitFor();
    // The operations view never appears for agent-007 (the server says 403).
    await agent.waitForTimeout(1000);
    assert.equal(await agent.locator('#ops').isHidden(), true);
    // hq's table picks agent-007 up on its next poll.
    await rows(hq).filter({ hasText: 'agent-007' }).waitFor();
    const row = rows(hq).filter({ hasText: 'agent-007' });
    assert.match(await row.textContent(), /127\.0\.0\.1:\d+/);
    assert.match(await row.textContent(), /@agent-007 ops/);
    await hq.locator('#ops-conns tr.you', { hasText: 'hq' }).waitFor();
  });

  it('sorts the connections by agent, peer and age', async () => {
    await hq.click('button.sort[data-key=sub]');
    assert.equal(await firstAgent(hq), 'agent-007');
    await hq.click('button.sort[data-key=sub]');
    assert.equal(await firstAgent(hq), 'hq');
    assert.equal(await hq.getAttribute('button.sort[data-key=sub]', 'data-dir'), '-1');
    await hq.click('button.sort[data-key=since_ms]');
    assert.equal(await firstAgent(hq), 'hq', 'hq connected first');
    await hq.click('button.sort[data-key=peer]');
    assert.equal(await rows(hq).count(), 2);
    await hq.click('button.sort[data-key=since_ms]');
  });

  it('streams security events live, newest first, in plain words', async () => {
    assert.equal(await badLogin('agent-007'), 401);
    await hq.locator('#ops-events li', { hasText: 'login failed: wrong password' }).waitFor();
    assert.equal(await badLogin('admin'), 401);
    await hq.locator('#ops-events li', { hasText: 'login failed: unknown user name' }).waitFor();
    assert.equal(await forgedUpgrade(), 401);
    const newest = hq.locator('#ops-events li:first-child');
    await newest.filter({ hasText: 'socket refused' }).waitFor();
    assert.match(await newest.textContent(), /bad signature/);
    assert.match(await newest.textContent(), /from 127\.0\.0\.1:\d+/);
    await hq.screenshot({ path: path.join(SHOTS, 'ops-01-operations.png'), fullPage: true });
    if (process.env.TESSERA_DOCS_SHOT) {
      await hq.locator('#ops').screenshot({ path: path.join(ROOT, 'docs/operations.png') });
    }
  });

  it('revokes an agent after a confirmation: its page is logged out', async () => {
    const row = rows(hq).filter({ hasText: 'agent-007' });
    await row.locator('button.revoke').click();
    const confirm = row.locator('button.revoke.armed');
    assert.match(await confirm.textContent(), /Confirm: revoke agent-007/);
    // Cancel disarms it: nothing happens.
    await row.locator('button.cancel').click();
    assert.equal(await row.locator('button.revoke.armed').count(), 0);
    await row.locator('button.revoke').click();
    await row.locator('button.revoke.armed').click();
    await hq.locator('#ops-note', { hasText: 'agent-007: 1 session revoked, 1 socket closed' }).waitFor();
    await agent.locator('#login').waitFor({ state: 'visible' });
    assert.match(await agent.locator('#login-note').textContent(), /revoked/);
    await hq.locator('#ops-events li:first-child', { hasText: 'sessions revoked' }).waitFor();
    assert.match(await hq.locator('#ops-events li:first-child').textContent(), /agent agent-007 · by hq/);
    await rows(hq).filter({ hasText: 'agent-007' }).waitFor({ state: 'detached' });
    await hq.screenshot({ path: path.join(SHOTS, 'ops-02-revoked.png'), fullPage: true });
    assert.deepEqual(problems, []);
  });
});
