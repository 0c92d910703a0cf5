// The console page (SPEC §8) in a real browser: Debian's headless Chromium
// driven by playwright-core, against the real `tessera serve --demo`.
//
//   cargo build --release
//   cd tests/browser && npm ci && node --test
//
// This script builds nothing. TESSERA_BIN overrides the binary
// (default: target/release/tessera), CHROMIUM_BIN the browser (default:
// /usr/bin/chromium): helpers.mjs, shared with the other browser tests.
// Screenshots of each state go to target/browser-screenshots/. Every wait
// has a timeout, and a watchdog ends the run (servers included) if the whole
// thing takes over five minutes.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import {
  ROOT,
  SHOTS,
  WAIT,
  launchBrowser,
  login as loginWith,
  openPage,
  startServer as startTessera,
  stopServer,
  until,
  waitStatus,
  watchdog as startWatchdog,
} from './helpers.mjs';

const TICK = 12_000; // the demo ticker publishes to ops every 5 s

let server; // { child, addr, port, base, passwords, stderr }
let shortLived; // another, whose access tokens live 20 s
let browser;
let evil; // a second local origin
let hist; // a server for the history tests (SPEC §10), reached through a proxy that can drop
const problems = []; // CSP violations and script errors on the console pages

const watchdog = startWatchdog('browser tests', 300_000, () => [server, shortLived, hist]);

// ---- the server ----

/** The demo server (hq and agent-007), JSON logs, cookies over plain HTTP. */
function startServer(extra = [], opts = {}) {
  return startTessera(['--demo', '--insecure-cookies', '--log-format', 'json', ...extra], opts);
}

/** A server's JSON log events named `event`. */
function logEvents(event, s = server) {
  return s.stderr.flatMap((l) => {
    try {
      const e = JSON.parse(l);
      return e.event === event ? [e] : [];
    } catch {
      return [];
    }
  });
}

// ---- plain HTTP and a raw upgrade, from Node ----

function get(pathname, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get(`${server.base}${pathname}`, { headers, timeout: WAIT }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('timeout', () => req.destroy(new Error('GET timed out')));
    req.on('error', reject);
  });
}

function post(pathname, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      `${server.base}${pathname}`,
      { method: 'POST', headers: { 'Content-Length': '0', ...headers }, timeout: WAIT },
      (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers }));
      },
    );
    req.on('timeout', () => req.destroy(new Error('POST timed out')));
    req.on('error', reject);
    req.end();
  });
}

/** A WebSocket upgrade request by hand; resolves with the status line's code and the body. */
function rawUpgrade(extraHeaders) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(server.port, '127.0.0.1');
    let data = Buffer.alloc(0);
    const finish = () => {
      sock.destroy();
      const text = data.toString('utf8');
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1]);
      const body = text.split('\r\n\r\n').slice(1).join('\r\n\r\n');
      resolve({ status, body });
    };
    sock.setTimeout(WAIT, () => {
      sock.destroy();
      reject(new Error('upgrade timed out'));
    });
    sock.on('error', reject);
    sock.on('data', (c) => {
      data = Buffer.concat([data, c]);
      const text = data.toString('utf8');
      const end = text.indexOf('\r\n\r\n');
      if (end < 0) return;
      if (text.startsWith('HTTP/1.1 101')) return finish();
      const len = Number(/content-length: *(\d+)/i.exec(text.slice(0, end))?.[1] ?? 0);
      if (data.length >= Buffer.byteLength(text.slice(0, end + 4)) + len) finish();
    });
    sock.on('end', finish);
    sock.write(
      'GET /ws HTTP/1.1\r\n' +
        `Host: 127.0.0.1:${server.port}\r\n` +
        'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n' +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' +
        extraHeaders.map((h) => h + '\r\n').join('') +
        '\r\n',
    );
  });
}

// ---- a second origin, for the cross-origin attempt ----

function startEvil() {
  const page = (target) => `<!doctype html><meta charset="utf-8"><title>some other site</title>
<body style="font:15px system-ui;margin:2rem"><h1>A page on another origin</h1><pre id="out">trying…</pre>
<script>
const r = (window.result = { events: [] });
const ws = new WebSocket(${JSON.stringify(target)});
ws.onopen = () => r.events.push('open');
ws.onmessage = (e) => r.events.push('message ' + e.data);
ws.onerror = () => r.events.push('error');
ws.onclose = (e) => {
  r.events.push('close ' + e.code);
  r.done = true;
  document.getElementById('out').textContent =
    location.origin + ' tried new WebSocket(' + ${JSON.stringify(target)} + '):\\n' + r.events.join('\\n');
};
</script>`;
  return new Promise((resolve) => {
    const srv = http.createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      res.end(req.url === '/' ? page(`ws://127.0.0.1:${server.port}/ws`) : '');
    });
    srv.listen(0, '127.0.0.1', () => resolve({ srv, port: srv.address().port }));
  });
}

// ---- browser helpers ----

async function consolePage(name, s = server) {
  return openPage(browser, s.base + '/', { label: name, problems, viewport: { width: 1280, height: 880 } });
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
}

async function login(page, user, s = server) {
  await loginWith(page, user, s.passwords[user]);
}

const updates = (page, text) => page.locator('#updates li:not(.event)', { hasText: text });

// ---- the tests ----

describe('console page in headless Chromium', { timeout: 170_000 }, () => {
  let agent; // agent-007's page
  let hq; // hq's page, in its own browser context (its own cookie jar)

  before(async () => {
    fs.mkdirSync(SHOTS, { recursive: true });
    server = await startServer();
    evil = await startEvil();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close().catch(() => {});
    evil?.srv.close();
    await stopServer(server);
    await stopServer(shortLived);
  });

  it('serves the page with a strict CSP and nosniff, gzipped only when asked', async () => {
    const plain = await get('/');
    assert.equal(plain.status, 200);
    assert.equal(plain.headers['content-encoding'], undefined);
    assert.equal(plain.headers['x-content-type-options'], 'nosniff');
    const csp = plain.headers['content-security-policy'];
    assert.match(csp, /^default-src 'none';/);
    assert.match(csp, /script-src 'sha256-[A-Za-z0-9+/]{43}=';/);
    assert.doesNotMatch(csp, /unsafe/);
    const zipped = await get('/', { 'Accept-Encoding': 'gzip, deflate, br' });
    assert.equal(zipped.headers['content-encoding'], 'gzip');
    assert.equal(zipped.headers.vary, 'Accept-Encoding');
    assert.ok(zlib.gunzipSync(zipped.body).equals(plain.body), 'the gzip copy is the same page');
    const refused = await get('/', { 'Accept-Encoding': 'gzip;q=0, identity' });
    assert.equal(refused.headers['content-encoding'], undefined);
    const raw = ['html', 'css', 'js'].map((x) => fs.statSync(path.join(ROOT, `assets/console.${x}`)).size);
    console.log(
      `console page: sources ${raw.join(' + ')} = ${raw.reduce((a, b) => a + b)} bytes, ` +
        `minified ${plain.body.length}, gzip ${zipped.body.length}`,
    );
  });

  it('agent-007 logs in, connects, subscribes to ops and gets a ticker update', async () => {
    agent = await consolePage('agent-007');
    await loginFormShown(agent);
    await shot(agent, '01-login');
    await agent.fill('#login-form input[name=username]', 'agent-007');
    await agent.fill('#login-form input[name=password]', 'not-the-password');
    await agent.click('#login-form button');
    await agent.waitForFunction(() => /wrong username or password/.test(document.getElementById('login-note').textContent));
    await shot(agent, '02-login-refused');
    await login(agent, 'agent-007');
    assert.equal(await agent.textContent('#who'), 'agent-007');
    assert.equal(await agent.textContent('#clearance'), '2');
    assert.match(await agent.textContent('#expires'), /\d\d:\d\d:\d\d \(in \d+ min\)/);
    await agent.fill('#sub-form input[name=channel]', 'ops');
    await agent.click('#sub-form button');
    await agent.locator('#subs li', { hasText: 'ops' }).waitFor();
    await updates(agent, 'mission update').first().waitFor({ timeout: TICK });
    assert.match(await updates(agent, 'mission update').first().textContent(), /ops\s+#\d+\s+from hq/);
    await shot(agent, '03-agent-ticker');
  });

  it('keeps the tokens away from the page script (HttpOnly cookies)', async () => {
    const visible = await agent.evaluate(() => document.cookie);
    assert.doesNotMatch(visible, /tessera_|eyJ/);
    const jar = await agent.context().cookies(server.base + '/auth/refresh');
    for (const name of ['tessera_access', 'tessera_refresh']) {
      const c = jar.find((x) => x.name === name);
      assert.ok(c, `${name} is set`);
      assert.equal(c.httpOnly, true, `${name} is HttpOnly`);
      assert.equal(c.sameSite, 'Strict', `${name} is SameSite=Strict`);
    }
    const storage = await agent.evaluate(() => JSON.stringify({ ...localStorage, ...sessionStorage }));
    assert.doesNotMatch(storage, /eyJ/, 'no token in web storage');
  });

  it('hq publishes from a second page and agent-007 sees it arrive', async () => {
    hq = await consolePage('hq');
    await login(hq, 'hq');
    const words = 'rendezvous at dawn'; // nobody else publishes it on this server
    await hq.fill('#pub-form input[name=channel]', 'ops');
    await hq.fill('#pub-form textarea', JSON.stringify({ text: words, grid: 'B4' }));
    await hq.click('#pub-form button');
    await hq.waitForFunction(() => /published to ops as #\d+/.test(document.getElementById('pub-note').textContent));
    await shot(hq, '04-hq-published');
    await updates(agent, words).waitFor();
    assert.match(await updates(agent, words).textContent(), /ops\s+#\d+\s+from hq/);
    await shot(agent, '05-agent-sees-hq');
  });

  it('refreshes over HTTP, reconnects and keeps the subscriptions', async () => {
    const before = logEvents('refresh_ok').length;
    await agent.click('#refresh');
    await agent.locator('#updates li.event', { hasText: 'token refreshed' }).waitFor();
    await waitStatus(agent, 'connected as agent-007');
    await until('refresh_ok in the log', () => logEvents('refresh_ok').length > before);
    const seen = await agent.locator('#updates li:not(.event)').count();
    await agent.waitForFunction((n) => document.querySelectorAll('#updates li:not(.event)').length > n, seen, {
      timeout: TICK,
    });
    assert.ok(await agent.locator('#subs li', { hasText: 'ops' }).count(), 'still subscribed to ops');
    // The replaced socket was closed by the page, normally.
    await until('the old socket closed with 1000', () =>
      logEvents('ws_close').some((e) => e.sub === 'agent-007' && e.code === 1000),
    );
    await until('three ticker updates', async () => (await updates(agent, 'mission update').count()) >= 3, TICK * 2);
    await shot(agent, 'console'); // logged in, a few updates: the README picture
  });

  it('refreshes by itself before a short-lived token expires', async () => {
    shortLived = await startServer(['--access-ttl', '20']);
    const page = await consolePage('agent-007 (20 s tokens)', shortLived);
    await login(page, 'agent-007', shortLived);
    // Refreshed after 60% of the 20 s, then again on the new token.
    await until('two refreshes', () => logEvents('refresh_ok', shortLived).length >= 2, 40_000);
    await waitStatus(page, 'connected as agent-007');
    const closes = logEvents('ws_close', shortLived).map((e) => e.code);
    assert.ok(!closes.includes(4001), `no socket expired: ${closes}`);
    assert.equal(logEvents('refresh_reused', shortLived).length, 0);
    await shot(page, '06-short-token-refreshed');
    await page.context().close();
    await stopServer(shortLived);
  });

  it('a reload reconnects with the cookies and keeps the channels', async () => {
    await agent.reload();
    await waitStatus(agent, 'connected as agent-007');
    await agent.locator('#subs li', { hasText: /^ops/ }).waitFor();
    await updates(agent, 'mission update').first().waitFor({ timeout: TICK });
  });

  it('refuses a subscription or publish without the right, in plain words', async () => {
    await agent.fill('#sub-form input[name=channel]', 'briefing'); // needs clearance 3
    await agent.click('#sub-form button');
    await agent.waitForFunction(() =>
      /not subscribed to briefing: not allowed/.test(document.getElementById('sub-note').textContent),
    );
    await agent.fill('#pub-form textarea', 'hello from the field');
    await agent.click('#pub-form button');
    await agent.waitForFunction(() => /not published to ops: not allowed/.test(document.getElementById('pub-note').textContent));
    await shot(agent, '06-agent-publish-refused');
  });

  it('a page on another origin cannot open an authenticated socket', async () => {
    // Same site (127.0.0.1, another port): the browser sends the cookie, and
    // the Origin check refuses. Another site (localhost): SameSite=Strict
    // keeps the cookie home, so there is no token at all.
    const cases = [
      [`http://127.0.0.1:${evil.port}/`, 'origin_not_allowed'],
      [`http://localhost:${evil.port}/`, 'missing_token'],
    ];
    for (const [url, reason] of cases) {
      const rejects = logEvents('ws_reject').length;
      const page = await agent.context().newPage();
      page.setDefaultTimeout(WAIT);
      await page.goto(url);
      const result = await page.waitForFunction(() => window.result?.done && window.result).then((h) => h.jsonValue());
      assert.ok(!result.events.includes('open'), `${url}: the socket never opened`);
      assert.ok(!result.events.some((e) => e.startsWith('message')), `${url}: no welcome`);
      const reject = await until(`ws_reject for ${url}`, () => logEvents('ws_reject').slice(rejects)[0]);
      assert.equal(reject.reason, reason, url);
      await shot(page, url.includes('localhost') ? '07-cross-site-refused' : '08-cross-origin-refused');
      await page.close();
    }
    // By hand: a valid cookie with a foreign Origin gets 403 origin_not_allowed;
    // the same request from the page's own origin is let through.
    const access = (await agent.context().cookies(server.base)).find((c) => c.name === 'tessera_access');
    const cookie = `Cookie: tessera_access=${access.value}`;
    const foreign = await rawUpgrade([cookie, 'Origin: http://evil.example']);
    assert.equal(foreign.status, 403);
    assert.equal(JSON.parse(foreign.body).error, 'origin_not_allowed');
    const none = await rawUpgrade([cookie]);
    assert.equal(none.status, 403, 'a cookie without Origin is refused too');
    const own = await rawUpgrade([cookie, `Origin: http://127.0.0.1:${server.port}`]);
    assert.equal(own.status, 101, 'the same cookie from the own origin is accepted');
  });

  it('logs out: the socket closes, the cookies go, the login form returns', async () => {
    await hq.click('#logout');
    await hq.locator('#login').waitFor({ state: 'visible' });
    await waitStatus(hq, 'logged out');
    const jar = await hq.context().cookies(server.base + '/auth/refresh');
    assert.deepEqual(jar.filter((c) => c.name.startsWith('tessera_')), [], 'cookies cleared');
    await shot(hq, '09-hq-logged-out');
  });

  it('shows a revoked session (4003) in plain words', async () => {
    // Log agent-007 out from elsewhere, with its refresh cookie.
    const refresh = (await agent.context().cookies(server.base + '/auth/refresh')).find(
      (c) => c.name === 'tessera_refresh',
    );
    // From the console's origin: a cookie-authenticated logout needs an
    // allowed Origin, like the upgrade (README, cookie origin rule).
    const r = await post('/auth/logout', { Cookie: `tessera_refresh=${refresh.value}`, Origin: server.base });
    assert.equal(r.status, 204);
    await agent.waitForFunction(() =>
      /session revoked \(logged out elsewhere, token reuse, or by an operator\)/.test(document.getElementById('login-note').textContent),
    );
    await agent.locator('#updates li.event', { hasText: '[4003]' }).waitFor({ state: 'attached' });
    await shot(agent, '10-agent-revoked');
  });

  it('had no CSP violation or script error, and logged no secret', () => {
    assert.deepEqual(problems, []);
    const log = server.stderr.join('\n');
    for (const [user, pw] of Object.entries(server.passwords)) {
      assert.ok(!log.includes(pw), `${user}'s password is not in the log`);
    }
    assert.doesNotMatch(log, /eyJ[A-Za-z0-9_-]{10,}\./, 'no token in the log');
  });
});

async function loginFormShown(page) {
  await page.locator('#login-form').waitFor({ state: 'visible' });
  assert.equal(await page.title(), 'tessera console');
}

// ---- history and resume (SPEC §10) ----

/** A TCP proxy to `port` that can drop every connection and refuse new ones, like a lost link. */
function startProxy(port) {
  const socks = new Set();
  let open = true;
  const srv = net.createServer((c) => {
    if (!open) return c.destroy();
    const u = net.connect(port, '127.0.0.1');
    const end = () => {
      c.destroy();
      u.destroy();
      socks.delete(c);
      socks.delete(u);
    };
    for (const s of [c, u]) {
      socks.add(s);
      s.on('error', end);
      s.on('close', end);
    }
    c.pipe(u);
    u.pipe(c);
  });
  return new Promise((resolve) =>
    srv.listen(0, '127.0.0.1', () => {
      const p = srv.address().port;
      resolve({
        srv,
        base: `http://127.0.0.1:${p}`,
        down() {
          open = false;
          for (const s of socks) s.destroy();
          socks.clear();
        },
        up() {
          open = true;
        },
      });
    }),
  );
}

/** POST with a JSON body straight to a server (not through the proxy); the status and JSON answer. */
function postJson(s, pathname, body, headers = {}) {
  const data = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      `${s.base}${pathname}`,
      {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data), ...headers },
        timeout: WAIT,
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(Buffer.concat(chunks).toString() || 'null') }));
      },
    );
    req.on('timeout', () => req.destroy(new Error('POST timed out')));
    req.on('error', reject);
    req.end(data);
  });
}

describe('console history and resume (SPEC §10)', { timeout: 120_000 }, () => {
  let proxy;
  let hqToken;
  let b; // a browser of its own: these pages come from another origin (the proxy)
  let page;
  let published = 0;

  /** Publishes `field update N` for the next `n` numbers, in order, each acknowledged. */
  async function publishField(n) {
    for (let i = 0; i < n; i++) {
      published += 1;
      const r = await postJson(hist, '/publish', { channel: 'field', data: { text: `field update ${published}` } }, {
        Authorization: `Bearer ${hqToken}`,
      });
      assert.equal(r.status, 202, JSON.stringify(r.body));
      assert.equal(r.body.id, published, 'offsets count up from 1');
    }
  }

  /** The numbers of the `field update N` entries shown, oldest first. */
  async function shownField() {
    const texts = await page.$$eval('#updates li:not(.event) .text', (els) => els.map((e) => e.textContent));
    return texts
      .map((t) => /^field update (\d+)$/.exec(t))
      .filter(Boolean)
      .map((m) => Number(m[1]))
      .reverse();
  }

  const range = (a, z) => Array.from({ length: z - a + 1 }, (_, i) => a + i);

  // 30 kept per channel: the drop below fits, the long one does not. On
  // disk, under a fixed key, so that a restarted server keeps the history
  // and the page's cookies.
  const histDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-console-history-'));
  const histArgs = ['--history', '30', '--history-dir', histDir];
  const histEnv = { TESSERA_SECRET: 'console-test-key-0123456789abcdefghijklmnop' };

  before(async () => {
    hist = await startServer(histArgs, { env: histEnv });
    proxy = await startProxy(hist.port);
    const hq = await postJson(hist, '/auth/login', { username: 'hq', password: hist.passwords.hq });
    assert.equal(hq.status, 200);
    hqToken = hq.body.access_token;
    b = await launchBrowser();
    const viewport = { width: 1280, height: 880 };
    page = await openPage(b, proxy.base + '/', { label: 'history', problems, viewport });
    await login(page, 'agent-007', { ...hist, base: proxy.base });
  });

  after(async () => {
    await b?.close().catch(() => {});
    proxy?.srv.close();
    await stopServer(hist);
    fs.rmSync(histDir, { recursive: true, force: true });
    clearTimeout(watchdog);
  });

  it('subscribing shows the last 20 updates of the channel', async () => {
    await publishField(25);
    await page.fill('#sub-form input[name=channel]', 'field');
    await page.click('#sub-form button');
    await updates(page, 'field update 25').waitFor();
    assert.deepEqual(await shownField(), range(6, 25));
    await publishField(1);
    await updates(page, 'field update 26').waitFor();
    assert.deepEqual(await shownField(), range(6, 26));
    await shot(page, '11-history-last-20');
  });

  it('a dropped link reconnects by itself and resumes without loss or duplicates', async () => {
    proxy.down();
    await waitStatus(page, 'reconnecting');
    await publishField(10); // 27..36, while the page is cut off
    await shot(page, '12-history-dropped');
    proxy.up();
    await updates(page, 'field update 36').waitFor({ timeout: 40_000 });
    await waitStatus(page, 'connected as agent-007');
    await publishField(1); // 37, live again
    await updates(page, 'field update 37').waitFor();
    assert.deepEqual(await shownField(), range(6, 37));
    assert.equal(await page.locator('#updates li.event', { hasText: 'not recovered' }).count(), 0);
    await shot(page, '13-history-resumed');
  });

  it('says so when the server no longer has everything that was missed', async () => {
    proxy.down();
    await waitStatus(page, 'reconnecting');
    await publishField(40); // 38..77: only the last 30 (48..77) are kept
    proxy.up();
    await updates(page, 'field update 77').waitFor({ timeout: 40_000 });
    await page.locator('#updates li.event', { hasText: 'not recovered' }).waitFor();
    assert.match(await page.textContent('#sub-note'), /resumed field, but some updates were missed/);
    assert.deepEqual(await shownField(), [...range(6, 37), ...range(48, 77)]);
    await shot(page, '14-history-not-recovered');
  });

  it('resumes across a server restart with --history-dir: same epoch, nothing missed', async () => {
    // Only field is checked: the personal channel never had a message, so
    // no log of it is on disk, and the restarted server names a new epoch.
    const fieldNotices = () => page.locator('#updates li.event', { hasText: /field.*not recovered/ }).count();
    const notices = await fieldNotices();
    proxy.down();
    await waitStatus(page, 'reconnecting');
    await publishField(3); // 78..80, then the server restarts
    await stopServer(hist);
    hist = await startServer(histArgs, { listen: `127.0.0.1:${hist.port}`, env: histEnv });
    proxy.up();
    await updates(page, 'field update 80').waitFor({ timeout: 40_000 });
    await waitStatus(page, 'connected as agent-007');
    await publishField(1); // 81, live from the restarted server
    await updates(page, 'field update 81').waitFor();
    assert.deepEqual(await shownField(), [...range(6, 37), ...range(48, 81)]);
    assert.equal(await fieldNotices(), notices);
    await shot(page, '15-history-server-restarted');
  });

  it('had no CSP violation or script error', () => {
    assert.deepEqual(problems, []);
  });
});
