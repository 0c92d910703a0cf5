// What every browser test shares (not a test itself: `node --test` runs the
// *.test.mjs files): the binary and browser under test, a real
// `tessera serve` started and stopped from Node, a watchdog, headless
// Chromium, a console page opened and logged in, and waits that time out.
//
// TESSERA_BIN overrides the binary (default: target/release/tessera; this
// builds nothing), CHROMIUM_BIN the browser (default: /usr/bin/chromium).
// Screenshots go to target/browser-screenshots/.

import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = process.env.TESSERA_BIN || path.join(ROOT, 'target/release/tessera');
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const SHOTS = path.join(ROOT, 'target/browser-screenshots');
export const WAIT = 15_000; // any single step

// ---- the server ----

/**
 * `tessera serve --listen LISTEN ARGS…` with `env` on top of this process's
 * environment. Resolves once it logged `listening` (and, with `--demo`, once
 * it printed the demo passwords of hq and agent-007) with
 * `{ child, addr, port, base, passwords, stderr (lines), stdout (text) }`;
 * rejects if it does not start within 20 s or exits first.
 */
export function startServer(args, { listen = '127.0.0.1:0', env = {} } = {}) {
  const demo = args.includes('--demo');
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, ['serve', '--listen', listen, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    const s = { child, addr: null, passwords: {}, stderr: [], stdout: '' };
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${BIN} did not start within 20 s:\n${s.stderr.join('\n')}`));
    }, 20_000);
    const ready = () => {
      if (s.addr && (!demo || (s.passwords.hq && s.passwords['agent-007']))) {
        clearTimeout(timer);
        s.port = Number(s.addr.split(':').pop());
        s.base = `http://127.0.0.1:${s.port}`; // one host throughout: cookies are per host
        resolve(s);
      }
    };
    lines(child.stderr, (line) => {
      s.stderr.push(line);
      try {
        const e = JSON.parse(line);
        if (e.event === 'listening') s.addr = e.addr;
      } catch {
        // not JSON: kept for the failure message
      }
      ready();
    });
    lines(child.stdout, (line) => {
      s.stdout += line + '\n';
      const m = /^demo user (\S+) password: (\S+)$/.exec(line);
      if (m) s.passwords[m[1]] = m[2];
      ready();
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${BIN} (build it with cargo build --release, or set TESSERA_BIN): ${e.message}`));
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${BIN} exited with ${code}:\n${s.stderr.join('\n')}`));
    });
  });
}

/** Calls `onLine` with each complete line of a readable stream. */
export function lines(stream, onLine) {
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      onLine(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
}

/** SIGTERM (SPEC §5: exits 0 within 5 s), SIGKILL after 6 s; waits for the exit. */
export async function stopServer(s) {
  if (!s) return;
  const { child } = s;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 6_000);
  await exited;
  clearTimeout(t);
}

/**
 * Ends the run after `ms` if it hangs, killing the servers `servers()`
 * returns (also when the process exits). Returns the timer (clear it in `after`).
 */
export function watchdog(name, ms, servers) {
  const killAll = () => {
    for (const s of servers()) s?.child.kill('SIGKILL');
  };
  const timer = setTimeout(() => {
    console.error(`${name}: watchdog fired after ${ms / 1000} s; stopping`);
    killAll();
    process.exit(1);
  }, ms);
  timer.unref();
  process.on('exit', killAll);
  return timer;
}

// ---- the browser ----

/** Headless Chromium (`launch()` gives every run a fresh temporary user-data dir of its own). */
export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--no-first-run',
      '--disable-quic',
      '--disable-sync',
    ],
    timeout: 30_000,
  });
}

/**
 * A page at `url` in a browser context of its own (its own cookie jar);
 * script errors and CSP violations go to `problems`, prefixed with `label`.
 */
export async function openPage(browser, url, { label, problems, viewport } = {}) {
  const ctx = await browser.newContext(viewport ? { viewport } : {});
  const page = await ctx.newPage();
  page.setDefaultTimeout(WAIT);
  const note = (text) => problems.push(label ? `${label}: ${text}` : text);
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) note(m.text());
  });
  page.on('pageerror', (e) => note(e.message));
  await page.goto(url);
  return page;
}

/** Waits until the console's status line contains `text`. */
export async function waitStatus(page, text) {
  await page.waitForFunction((t) => document.getElementById('status').textContent.includes(t), text);
}

/** Fills the console's login form and submits it. */
export async function submitLogin(page, user, password) {
  await page.fill('#login-form input[name=username]', user);
  await page.fill('#login-form input[name=password]', password);
  await page.click('#login-form button');
}

/** Logs in through the console's form and waits until it says `connected as USER`. */
export async function login(page, user, password) {
  await submitLogin(page, user, password);
  await waitStatus(page, `connected as ${user}`);
}

/** Polls `check` every 50 ms until it returns something truthy (that value), or throws after `ms`. */
export async function until(what, check, ms = WAIT) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
