// The tessera console (SPEC §8).
//
// This script never sees a token. Login and refresh answers carry the
// tokens in their JSON bodies (for non-browser clients), but the page only
// checks `res.ok` and never reads, stores or shows those bodies: the
// browser keeps the tokens as HttpOnly cookies (tessera_access, Path=/, and
// tessera_refresh, Path=/auth) and sends them itself, on the same-origin
// socket upgrade and on /auth/* requests.
//
// Refreshing: the socket's in-band `refresh` command needs the new token in
// the message, which this page cannot read. So before the token expires the
// page calls POST /auth/refresh (the browser sends the refresh cookie and
// stores the new access cookie), opens a new socket with the new cookie,
// subscribes it to the same channels, and only then closes the old one.
// Updates seen on both sockets are shown once (ids count up per channel).
//
// Everything shown comes from the server or other agents and is put on the
// page as text (textContent), never as HTML.
//
// Minified by build.rs, line by line: no multi-line strings or templates.
'use strict';

const $ = (id) => document.getElementById(id);
// Kept in localStorage, neither secret: "probably logged in", and the
// channels wanted, so that a reload or a new tab picks up where it was.
const SESSION_FLAG = 'tessera.session';
const SUBS_KEY = 'tessera.channels';

const CLOSE_WORDS = {
  1000: 'closed',
  1001: 'server shutting down',
  1006: 'connection lost',
  1008: 'closed by policy',
  1009: 'message too big',
  4001: 'session expired, log in again',
  4003: 'session revoked (logged out elsewhere or token reuse)',
  4008: 'too slow, reconnect',
};

const ERROR_WORDS = {
  forbidden: 'not allowed',
  bad_channel: 'not a valid channel name (1-64 of A-Z a-z 0-9 _ . : - @)',
  bad_message: 'the server did not understand that',
};

const state = {
  ws: null, // the current socket
  me: null, // the welcome message: sub, clearance, expires_at, server
  welcomedAt: 0, // Date.now() at that welcome
  subs: new Set(savedSubs()), // channels this page wants, kept across reconnects
  lastId: new Map(), // channel -> last update id shown
  refreshTimer: 0,
  renewing: null, // the refresh in flight, if any
  loggingOut: false,
  retried: false, // one refresh-and-retry after a refused upgrade
  nextRef: 1,
  pending: new Map(), // ref -> { kind: 'subscribe' | 'publish', channel }, to place replies
};

function savedSubs() {
  try {
    const list = JSON.parse(localStorage.getItem(SUBS_KEY));
    return Array.isArray(list) ? list.filter((c) => typeof c === 'string') : [];
  } catch {
    return [];
  }
}

// ---- what the person sees ----

function setStatus(text, kind) {
  const s = $('status');
  s.textContent = text;
  s.className = 'pill ' + kind;
}

function note(id, text, kind) {
  const n = $(id);
  n.textContent = text;
  n.className = 'note ' + (kind || '');
}

function showLogin(message) {
  clearTimeout(state.refreshTimer);
  localStorage.removeItem(SESSION_FLAG);
  state.me = null;
  $('live').hidden = true;
  $('login').hidden = false;
  note('login-note', message || '', message ? 'bad' : '');
  $('login-form').password.value = '';
  $('login-form').username.focus();
}

function showLive() {
  $('login').hidden = true;
  $('live').hidden = false;
}

function time(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function addEntry(li) {
  const list = $('updates');
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
}

function logEvent(text, bad) {
  addEntry(el('li', bad ? 'event bad' : 'event', time(Date.now()) + '  ' + text));
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  e.textContent = text;
  return e;
}

function showUpdate(m) {
  const li = document.createElement('li');
  const meta = el('div', 'meta', time(m.ts) + '  ');
  meta.append(el('b', '', m.channel), '  #' + m.id + '  from ' + m.from);
  li.append(meta);
  const d = m.data;
  if (typeof d === 'string') {
    li.append(el('div', 'text', d));
  } else if (d && typeof d === 'object' && typeof d.text === 'string') {
    li.append(el('div', 'text', d.text));
    const rest = Object.assign({}, d);
    delete rest.text;
    if (Object.keys(rest).length) li.append(el('pre', 'json', JSON.stringify(rest)));
  } else {
    li.append(el('pre', 'json', JSON.stringify(d, null, 1)));
  }
  addEntry(li);
}

function renderSubs() {
  localStorage.setItem(SUBS_KEY, JSON.stringify([...state.subs]));
  const ul = $('subs');
  ul.replaceChildren();
  for (const ch of state.subs) {
    const li = document.createElement('li');
    const x = document.createElement('button');
    x.type = 'button';
    x.textContent = '✕';
    x.title = 'unsubscribe from ' + ch;
    x.setAttribute('aria-label', x.title);
    x.onclick = () => send({ type: 'unsubscribe', channel: ch });
    li.append(ch, x);
    ul.append(li);
  }
}

function renderExpiry() {
  if (!state.me) return;
  const left = Math.round(state.me.expires_at - Date.now() / 1000);
  const when = time(state.me.expires_at * 1000);
  const rel = left <= 0 ? 'now' : left < 120 ? 'in ' + left + ' s' : 'in ' + Math.round(left / 60) + ' min';
  $('expires').textContent = when + ' (' + rel + ')';
}
setInterval(renderExpiry, 1000);

function setConnected(on) {
  const b = $('connect');
  b.textContent = on ? 'Disconnect' : 'Connect';
  b.dataset.on = on ? '1' : '';
}

// ---- HTTP: login, refresh, logout (cookies only) ----

function post(path, body) {
  return fetch(path, {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body || {}),
  });
}

async function reasonOf(res) {
  // Only ever called on failed answers, whose body is {error, message}.
  try {
    const e = await res.json();
    return e.message || e.error || 'status ' + res.status;
  } catch {
    return 'status ' + res.status;
  }
}

async function login(username, password, otp) {
  note('login-note', 'checking…');
  let res;
  try {
    res = await post('/auth/login', otp ? { username, password, otp } : { username, password });
  } catch {
    return note('login-note', 'cannot reach the server', 'bad');
  }
  if (!res.ok) return loginRefused(res);
  hideOtp();
  // The body holds the tokens: deliberately not read (see the top of this file).
  // The channels wanted survive a re-login after expiry; Log out clears them.
  localStorage.setItem(SESSION_FLAG, '1');
  note('login-note', '');
  $('login-form').password.value = '';
  connect();
}

// ---- second factor (SPEC §11): the code field appears when the server asks ----

function askOtp(words) {
  const input = $('login-form').otp;
  $('otp-row').hidden = false;
  input.value = '';
  input.focus();
  note('login-note', words, 'bad');
}

function hideOtp() {
  $('otp-row').hidden = true;
  $('login-form').otp.value = '';
}

async function loginRefused(res) {
  let e = {};
  try {
    e = await res.json();
  } catch {
    // not JSON: the status says enough
  }
  if (e.error === 'mfa_required') return askOtp('enter the 6-digit code from your authenticator app');
  if (e.error === 'invalid_otp') return askOtp('wrong or already used code: enter the next one');
  if (res.status === 401) {
    hideOtp();
    return note('login-note', 'wrong username or password', 'bad');
  }
  note('login-note', e.message || e.error || 'status ' + res.status, 'bad');
}

// One refresh at a time: two refreshes with the same cookie would look like
// token reuse and revoke the session. Tabs are serialised with a Web Lock
// where the browser has them (secure contexts, which include localhost).
function renew() {
  if (state.renewing) return state.renewing;
  const run = async () => {
    try {
      const res = await post('/auth/refresh');
      return res.ok; // the body holds the tokens: not read
    } catch {
      return false;
    }
  };
  const locked = navigator.locks ? navigator.locks.request('tessera-refresh', run) : run();
  state.renewing = locked.finally(() => {
    state.renewing = null;
  });
  return state.renewing;
}

async function refreshNow() {
  if (state.renewing) return; // the timer and the server's notice may coincide
  clearTimeout(state.refreshTimer);
  setStatus('refreshing…', 'wait');
  if (await renew()) {
    logEvent('token refreshed; reconnecting with the new one');
    connect();
  } else {
    closeSocket();
    showLogin('your session could not be renewed; log in again');
    setStatus('logged out', 'off');
  }
}

function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  // Two minutes before expiry (less a little jitter, so that several tabs
  // do not all refresh at once), or after 60% of a short remaining life.
  // A clock far ahead of the server's sees no life left: every 30 s then.
  // The server's `expiring` notice (60 s before) is the backstop for a
  // clock that runs behind.
  const left = state.me.expires_at - Date.now() / 1000;
  const wait = left > 240 ? left - 120 - Math.random() * 20 : left > 0 ? left * 0.6 : 30;
  state.refreshTimer = setTimeout(refreshNow, wait * 1000);
}

async function logout() {
  state.loggingOut = true;
  clearTimeout(state.refreshTimer);
  try {
    await post('/auth/logout');
  } catch {
    // Offline: still forget the session on this page.
  }
  closeSocket();
  state.loggingOut = false;
  state.subs.clear();
  renderSubs();
  showLogin('');
  setStatus('logged out', 'off');
  logEvent('logged out');
}

// ---- the socket ----

function send(msg) {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    logEvent('not connected', true);
    return null;
  }
  msg.ref = state.nextRef++;
  ws.send(JSON.stringify(msg));
  return msg.ref;
}

function closeSocket() {
  const ws = state.ws;
  state.ws = null;
  if (ws) ws.close(1000);
  setConnected(false);
}

function connect() {
  const old = state.ws;
  const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
  const ws = new WebSocket(url); // same origin: the browser adds the cookie and Origin
  let welcomed = false;
  state.ws = ws;
  showLive();
  if (!old) setStatus('connecting…', 'wait');

  ws.onmessage = (ev) => {
    let m;
    try {
      m = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (m.type === 'welcome') {
      if (ws !== state.ws) return ws.close(1000); // superseded before it was ready
      welcomed = true;
      state.retried = false;
      state.me = m;
      state.welcomedAt = Date.now();
      $('who').textContent = m.sub;
      $('clearance').textContent = String(m.clearance);
      $('server').textContent = m.server;
      renderExpiry();
      scheduleRefresh();
      setConnected(true);
      setStatus('connected as ' + m.sub, 'on');
      // The server subscribes every agent to its personal channel; the others
      // are asked for again and listed once the server says `subscribed`.
      const wanted = [...state.subs].filter((ch) => ch !== '@' + m.sub);
      state.subs = new Set(['@' + m.sub]);
      renderSubs();
      for (const ch of wanted) subscribe(ch);
      // The new socket is ready: retire the one it replaces. A fresh start
      // (not a replacement) may face a restarted server whose ids start over.
      if (old) {
        old.close(1000);
      } else {
        state.lastId.clear();
        logEvent('connected as ' + m.sub + ' (clearance ' + m.clearance + ')');
      }
    } else if (ws !== state.ws) {
      // A socket being replaced still delivers updates until it closes.
      if (m.type === 'message') onUpdate(m);
    } else {
      onMessage(m);
    }
  };

  ws.onclose = (ev) => {
    if (ws !== state.ws) return; // replaced or closed on purpose
    state.ws = null;
    setConnected(false);
    if (state.loggingOut) return;
    if (!welcomed) return onRefused(old);
    const words = CLOSE_WORDS[ev.code] || 'closed (code ' + ev.code + ')';
    const reason = ev.reason && ev.reason !== words ? ' — ' + ev.reason : '';
    logEvent('disconnected: ' + words + ' [' + ev.code + ']' + reason, ev.code !== 1000);
    if (ev.code === 4001 || ev.code === 4003) {
      showLogin(words);
      setStatus(words, 'bad');
    } else {
      setStatus('disconnected: ' + words, 'bad');
    }
  };
}

// The upgrade was refused before a welcome. A browser does not say why
// (the HTTP status is hidden from scripts); the usual cause is a missing or
// expired access cookie, so try one refresh before asking for a login.
async function onRefused(old) {
  if (old) old.close(1000);
  if (localStorage.getItem(SESSION_FLAG) && !state.retried) {
    state.retried = true;
    if (await renew()) return connect();
  }
  state.retried = false;
  showLogin('could not connect: log in (again)');
  setStatus('not logged in', 'off');
}

function onUpdate(m) {
  const last = state.lastId.get(m.channel) || 0;
  if (m.id <= last) return; // already shown (seen on the socket being replaced)
  state.lastId.set(m.channel, m.id);
  showUpdate(m);
}

function onMessage(m) {
  const what = state.pending.get(m.ref);
  state.pending.delete(m.ref);
  switch (m.type) {
    case 'message':
      return onUpdate(m);
    case 'subscribed':
      state.subs.add(m.channel);
      renderSubs();
      return note('sub-note', 'subscribed to ' + m.channel, 'ok');
    case 'unsubscribed':
      state.subs.delete(m.channel);
      renderSubs();
      if (m.reason === 'forbidden') return logEvent('dropped from ' + m.channel + ': no longer allowed', true);
      return note('sub-note', 'unsubscribed from ' + m.channel, '');
    case 'published':
      return note('pub-note', 'published to ' + m.channel + ' as #' + m.id, 'ok');
    case 'expiring':
      // Right after the welcome it only says that the token is short-lived,
      // which the timer has in hand; later it means our clock runs behind.
      if (Date.now() - state.welcomedAt > 2000) refreshNow();
      return;
    case 'error':
      return onError(m, what);
  }
}

function onError(m, what) {
  const words = ERROR_WORDS[m.code] || m.message || m.code;
  if (!what) return logEvent('error: ' + words, true);
  if (what.kind === 'publish') return note('pub-note', 'not published to ' + what.channel + ': ' + words, 'bad');
  note('sub-note', 'not subscribed to ' + what.channel + ': ' + words, 'bad');
}

// ---- wiring ----

$('login-form').onsubmit = (e) => {
  e.preventDefault();
  const f = e.target;
  login(f.username.value.trim(), f.password.value, f.otp.value.trim());
};

function subscribe(channel) {
  const ref = send({ type: 'subscribe', channel });
  if (ref) state.pending.set(ref, { kind: 'subscribe', channel });
}

$('sub-form').onsubmit = (e) => {
  e.preventDefault();
  subscribe(e.target.channel.value.trim());
  e.target.channel.value = '';
};

$('pub-form').onsubmit = (e) => {
  e.preventDefault();
  const f = e.target;
  let data;
  try {
    data = JSON.parse(f.data.value);
  } catch {
    data = f.data.value; // plain text goes out as a JSON string
  }
  const channel = f.channel.value.trim();
  const ref = send({ type: 'publish', channel, data });
  if (ref) {
    state.pending.set(ref, { kind: 'publish', channel });
    note('pub-note', 'publishing…');
  }
};

$('connect').onclick = () => {
  if ($('connect').dataset.on) {
    closeSocket();
    setStatus('disconnected', 'off');
    logEvent('disconnected');
  } else {
    connect();
  }
};
$('refresh').onclick = refreshNow;
$('logout').onclick = logout;

// A reload or a new tab keeps the session (the cookies outlive the page).
if (localStorage.getItem(SESSION_FLAG)) {
  connect();
} else {
  showLogin('');
}
