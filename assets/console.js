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
// History (SPEC §10): a channel's updates are numbered by an offset (`id`)
// within an epoch. Subscribing asks for `since:{last:20}`, so the last 20
// updates show; after that the page remembers each channel's epoch and last
// offset, and every new socket (a refresh, or a reconnect after a drop, which
// happens by itself with backoff) subscribes with `since:{epoch,offset}` and
// is sent what it missed before anything live. When the server no longer has
// all of it (`recovered:false`) the page says so. Updates that arrive live
// on the personal channel ahead of its replay are held and merged in order.
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
  4003: 'session revoked (logged out elsewhere, token reuse, or by an operator)',
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
  pos: new Map(), // channel -> { epoch, offset }: the last update shown
  posOwner: '', // whose positions those are (the welcome's sub)
  resuming: new Map(), // channel -> the position asked for, until `subscribed`
  held: new Map(), // channel -> { at, list }: live updates that came ahead of a replay
  attempt: 0, // reconnects since the last welcome (backoff)
  reconnectTimer: 0,
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
  opsStop();
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
    li.append(ch, presenceBadge(ch), x);
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
      return null; // the server cannot be reached
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
  clearTimeout(state.reconnectTimer);
  try {
    await post('/auth/logout');
  } catch {
    // Offline: still forget the session on this page.
  }
  closeSocket();
  state.loggingOut = false;
  state.subs.clear();
  state.pos.clear();
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
  clearTimeout(state.reconnectTimer);
  const ws = state.ws;
  state.ws = null;
  if (ws) ws.close(1000);
  setConnected(false);
}

// After a drop: connect again in 1 s, doubling to 30 s, with jitter.
function reconnectLater(why) {
  clearTimeout(state.reconnectTimer);
  const wait = Math.min(30, 2 ** state.attempt) * (0.75 + Math.random() / 2);
  state.attempt += 1;
  setStatus(why + '; reconnecting in ' + Math.ceil(wait) + ' s', 'wait');
  state.reconnectTimer = setTimeout(connect, wait * 1000);
}

function connect() {
  clearTimeout(state.reconnectTimer);
  const old = state.ws;
  const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
  const ws = new WebSocket(url); // same origin: the browser adds the cookie and Origin
  let welcomed = false;
  // Resumes asked on an earlier socket will not be answered.
  state.resuming.clear();
  state.held.clear();
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
    if (ws === state.ws && opsMessage(m)) return; // operations view and presence
    if (m.type === 'welcome') {
      if (ws !== state.ws) return ws.close(1000); // superseded before it was ready
      welcomed = true;
      state.retried = false;
      state.attempt = 0;
      if (m.sub !== state.posOwner) state.pos.clear(); // another agent's positions
      state.posOwner = m.sub;
      state.me = m;
      state.welcomedAt = Date.now();
      $('who').textContent = m.sub;
      $('clearance').textContent = String(m.clearance);
      $('server').textContent = m.server;
      renderExpiry();
      scheduleRefresh();
      setConnected(true);
      setStatus('connected as ' + m.sub, 'on');
      opsStart();
      // The server subscribes every agent to its personal channel; the others
      // are asked for again and listed once the server says `subscribed`.
      // Every one of them, the personal channel too, is resumed (or shows its
      // last updates) with `since`.
      const wanted = [...state.subs].filter((ch) => ch !== '@' + m.sub);
      state.subs = new Set(['@' + m.sub]);
      renderSubs();
      subscribe('@' + m.sub);
      for (const ch of wanted) subscribe(ch);
      // The new socket is ready: retire the one it replaces.
      if (old) {
        old.close(1000);
      } else {
        logEvent('connected as ' + m.sub + ' (clearance ' + m.clearance + ')');
      }
    } else if (ws !== state.ws) {
      // A socket being replaced still delivers updates until it closes.
      if (m.type === 'message') onUpdate(m);
    } else {
      // A replay is over once something else comes.
      flushHeld(m.type === 'message' ? m.channel : null, 0);
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
      reconnectLater('disconnected: ' + words);
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
    const renewed = await renew();
    if (renewed) return connect();
    if (renewed === null) {
      // The server is down or out of reach, not refusing: try again later.
      state.retried = false;
      return reconnectLater('cannot reach the server');
    }
  }
  state.retried = false;
  showLogin('could not connect: log in (again)');
  setStatus('not logged in', 'off');
}

function onUpdate(m) {
  if (!Number.isSafeInteger(m.id)) return showUpdate(m);
  if (state.resuming.has(m.channel)) {
    // Live, ahead of the replay this channel is about to get: hold it.
    const h = state.held.get(m.channel) || { at: 0, list: [] };
    h.list.push(m);
    state.held.set(m.channel, h);
    return;
  }
  const h = state.held.get(m.channel);
  if (h) {
    // Merging the replay with what was held: older held ones first.
    h.list.sort((a, b) => a.id - b.id);
    while (h.list.length && h.list[0].id <= m.id) {
      const first = h.list.shift();
      if (first.id < m.id) showOnce(first);
    }
    if (!h.list.length) state.held.delete(m.channel);
  }
  showOnce(m);
}

// Shows an update unless it was shown already: offsets only grow within an
// epoch, so anything at or below the channel's last offset is a repeat.
function showOnce(m) {
  const p = state.pos.get(m.channel);
  if (p && m.id <= p.offset) return;
  if (p) p.offset = m.id;
  else state.pos.set(m.channel, { epoch: null, offset: m.id });
  showUpdate(m);
}

// Ends held merges whose replay is over (`subscribed` came, and then
// something else, or `age` ms passed), except `keep`'s.
function flushHeld(keep, age) {
  for (const [ch, h] of state.held) {
    if (ch === keep || state.resuming.has(ch) || Date.now() - h.at < age) continue;
    state.held.delete(ch);
    h.list.sort((a, b) => a.id - b.id).forEach(showOnce);
  }
}
setInterval(() => flushHeld(null, 1000), 1000);

// The answer to a subscribe with `since`: where the channel stands now.
// Returns words for the channel note when updates were missed.
function onSubscribed(m) {
  const asked = state.resuming.get(m.channel);
  state.resuming.delete(m.channel);
  const h = state.held.get(m.channel);
  if (h) h.at = Date.now();
  if (typeof m.epoch !== 'string' || !Number.isSafeInteger(m.offset)) return ''; // a server without history
  const p = state.pos.get(m.channel);
  if (asked && asked.epoch && asked.epoch === m.epoch) {
    if (p) p.offset = Math.min(p.offset, m.offset);
    if (m.recovered === false) {
      logEvent('some updates on ' + m.channel + ' were missed: the server no longer had them (not recovered)', true);
      return 'resumed ' + m.channel + ', but some updates were missed';
    }
  } else if (asked && asked.epoch) {
    state.pos.set(m.channel, { epoch: m.epoch, offset: 0 });
    logEvent('the history of ' + m.channel + ' started over on the server: updates may be missing (not recovered)', true);
    return 'resumed ' + m.channel + ', but updates may be missing';
  } else {
    // `last`: the replay starts at the oldest of the last few.
    state.pos.set(m.channel, { epoch: m.epoch, offset: 0 });
  }
  return '';
}

function onMessage(m) {
  const what = state.pending.get(m.ref);
  state.pending.delete(m.ref);
  switch (m.type) {
    case 'message':
      return onUpdate(m);
    case 'subscribed': {
      const missed = onSubscribed(m);
      state.subs.add(m.channel);
      renderSubs();
      return note('sub-note', missed || 'subscribed to ' + m.channel, missed ? 'bad' : 'ok');
    }
    case 'unsubscribed':
      state.subs.delete(m.channel);
      state.pos.delete(m.channel); // subscribing again shows the last updates again
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
      if (what && what.kind === 'subscribe' && state.resuming.delete(what.channel)) flushHeld(null, 0);
      return onError(m, what);
  }
}

function onError(m, what) {
  const words = ERROR_WORDS[m.code] || m.message || m.code;
  if (!what) return logEvent('error: ' + words, true);
  if (what.kind === 'publish') return note('pub-note', 'not published to ' + what.channel + ': ' + words, 'bad');
  note('sub-note', 'not subscribed to ' + what.channel + ': ' + words, 'bad');
}

// ---- operations view (SPEC §13) and presence ----
//
// Every agent sees, next to each subscribed channel, how many distinct
// agents are subscribed to it now (the `presence` command, asked again
// every 10 s). An operator (the server answers GET /admin/connections with
// 200; others get 403, or 404 when the admin API is off) also sees the
// live connections (polled every 3 s, sortable), the security events
// (the last 100 from GET /admin/events, then live on the `$security`
// channel, newest first, in plain words) and a revoke button per agent
// that asks for confirmation. The admin requests carry the cookie; the
// browser marks them same-origin (Sec-Fetch-Site, Origin on the POST).

const EVENT_WORDS = {
  ws_reject: 'socket refused',
  login_failed: 'login failed',
  ip_throttled: 'address blocked',
  refresh_reused: 'refresh token reused',
  revoked: 'sessions revoked',
  slow_consumer: 'slow consumer closed',
};
const SERIOUS = new Set(['ip_throttled', 'refresh_reused', 'revoked']);

const REASON_WORDS = {
  missing_token: 'no token sent',
  malformed_token: 'malformed token',
  unsupported_alg: 'unsupported signing algorithm',
  unknown_kid: 'unknown key id',
  bad_signature: 'bad signature (forged, or signed with another key)',
  invalid_claims: 'invalid claims',
  token_expired: 'expired token',
  token_not_yet_valid: 'token not yet valid',
  wrong_issuer: 'wrong issuer',
  wrong_audience: 'wrong audience',
  token_revoked: 'token of a revoked session',
  insufficient_clearance: 'clearance too low for this server',
  origin_not_allowed: 'web page from another origin',
  mfa_required: 'no one-time code at login',
  too_many_attempts: 'address blocked for failures',
  server_full: 'server at its connection limit',
  bad_handshake: 'broken WebSocket handshake',
  wrong_password: 'wrong password',
  unknown_user: 'unknown user name',
  invalid_otp: 'wrong one-time code',
  mfa_not_enrolled: 'second factor not set up',
  too_many_failures: '10 failed attempts within 60 s: blocked for 60 s',
  refresh_token_reused: 'a used refresh token came back (possible theft): session revoked',
  operator: 'by an operator',
  queue_over_depth: 'stopped reading its updates',
};

const ops = {
  on: false, // this page's agent is an operator
  timer: 0, // connections poll
  presenceTimer: 0,
  conns: [],
  skew: 0, // server clock minus ours, in ms
  sort: { key: 'since_ms', dir: 1 },
  events: new Map(), // id -> event
  drawPending: false, // an events redraw is scheduled
  armed: '', // the agent whose revoke awaits confirmation
  armedTimer: 0,
  presence: new Map(), // channel -> count
  badges: new Map(), // channel -> its badge element
};

function presenceBadge(ch) {
  const b = el('span', 'presence', ops.presence.has(ch) ? '· ' + ops.presence.get(ch) : '');
  b.title = 'agents subscribed now';
  ops.badges.set(ch, b);
  return b;
}

function askPresence(ch) {
  const ws = state.ws;
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'presence', channel: ch }));
}

function askAllPresence() {
  for (const ch of state.subs) askPresence(ch);
}

// Messages for this part of the page; true when handled here.
function opsMessage(m) {
  if (m.type === 'presence') {
    ops.presence.set(m.channel, m.subs.length);
    const b = ops.badges.get(m.channel);
    if (b) b.textContent = '· ' + m.subs.length;
    return true;
  }
  if (m.channel !== '$security') {
    if (m.type === 'subscribed') setTimeout(() => askPresence(m.channel), 0);
    return false;
  }
  if (m.type === 'message' && m.data && typeof m.data.id === 'number') {
    ops.events.set(m.data.id, m.data);
    // At most five redraws a second, however fast events come: a flood of
    // refused upgrades must not make this page too slow to read its socket.
    // (A timer, not an animation frame: those stop in a hidden tab, and the
    // redraw is also what trims the list.)
    if (!ops.drawPending) {
      ops.drawPending = true;
      setTimeout(() => {
        ops.drawPending = false;
        renderEvents();
      }, 200);
    }
  }
  return true; // subscribed/unsubscribed/errors of $security are ours
}

async function adminGet(path) {
  try {
    const res = await fetch(path, { credentials: 'same-origin', cache: 'no-store' });
    return res.ok ? await res.json() : { status: res.status };
  } catch {
    return { status: 0 };
  }
}

// After every welcome: am I an operator? Then fill and follow the view.
async function opsStart() {
  clearInterval(ops.presenceTimer);
  ops.presenceTimer = setInterval(askAllPresence, 10_000);
  const first = await loadConns();
  ops.on = !!first;
  $('ops').hidden = !ops.on;
  if (!ops.on) return;
  const ws = state.ws;
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'subscribe', channel: '$security' }));
  // What came while no socket listened (first load, or a reconnect).
  const last = Math.max(0, ...ops.events.keys());
  const page = await adminGet(last ? '/admin/events?limit=1000&after=' + last : '/admin/events?limit=100');
  for (const e of page.events || []) ops.events.set(e.id, e);
  renderEvents();
  clearInterval(ops.timer);
  ops.timer = setInterval(loadConns, 3000);
}

function opsStop() {
  clearInterval(ops.timer);
  clearInterval(ops.presenceTimer);
  ops.on = false;
  ops.events.clear();
  $('ops').hidden = true;
}

async function loadConns() {
  const r = await adminGet('/admin/connections');
  if (!r.connections) return false;
  ops.conns = r.connections;
  ops.skew = r.now_ms - Date.now();
  renderConns();
  return true;
}

function age(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 90) return s + ' s';
  if (s < 5400) return Math.round(s / 60) + ' min';
  return Math.round(s / 3600) + ' h';
}

function sortConns(list) {
  const { key, dir } = ops.sort;
  return list.slice().sort((a, b) => {
    const x = a[key];
    const y = b[key];
    const c = typeof x === 'number' ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true });
    return c * dir || a.conn - b.conn;
  });
}

function renderConns() {
  const now = Date.now() + ops.skew;
  const body = $('ops-conns').tBodies[0];
  body.replaceChildren();
  for (const c of sortConns(ops.conns)) {
    const tr = document.createElement('tr');
    if (state.me && c.sub === state.me.sub) tr.className = 'you';
    const since = el('td', '', age(now - c.since_ms));
    since.title = 'since ' + new Date(c.since_ms).toLocaleString();
    tr.append(
      el('td', '', c.sub),
      el('td', '', c.peer),
      since,
      el('td', '', String(c.clearance)),
      channelsCell(c.channels),
      el('td', '', c.messages_in + ' / ' + c.messages_out),
      el('td', '', String(c.queued)),
      revokeCell(c.sub),
    );
    body.append(tr);
  }
  $('ops-count').textContent = ops.conns.length + ' open';
  for (const b of document.querySelectorAll('button.sort')) {
    b.dataset.dir = b.dataset.key === ops.sort.key ? String(ops.sort.dir) : '';
  }
}

function channelsCell(channels) {
  const td = el('td', 'chs', '');
  for (const ch of channels) td.append(el('span', '', ch), ' ');
  return td;
}

function revokeCell(sub) {
  const td = document.createElement('td');
  const b = el('button', 'revoke', 'Revoke');
  b.type = 'button';
  b.title = 'revoke every session of ' + sub + ' and close its sockets';
  if (ops.armed === sub) {
    b.className = 'revoke armed';
    b.textContent = 'Confirm: revoke ' + sub;
    const no = el('button', 'cancel', 'Cancel');
    no.type = 'button';
    no.onclick = () => arm('');
    b.onclick = () => revokeAgent(sub);
    td.append(b, no);
  } else {
    b.onclick = () => arm(sub);
    td.append(b);
  }
  return td;
}

// The first click arms the button; a second within 8 s revokes.
function arm(sub) {
  clearTimeout(ops.armedTimer);
  ops.armed = sub;
  if (sub) ops.armedTimer = setTimeout(() => arm(''), 8000);
  renderConns();
}

async function revokeAgent(sub) {
  arm('');
  note('ops-note', 'revoking ' + sub + '…');
  let res;
  try {
    res = await post('/admin/revoke', { sub });
  } catch {
    return note('ops-note', 'cannot reach the server', 'bad');
  }
  if (!res.ok) return note('ops-note', 'not revoked: ' + (await reasonOf(res)), 'bad');
  const r = await res.json();
  const s = (n, one, many) => n + ' ' + (n === 1 ? one : many);
  note('ops-note', sub + ': ' + s(r.revoked, 'session', 'sessions') + ' revoked, ' + s(r.closed, 'socket', 'sockets') + ' closed', 'ok');
  loadConns();
}

function renderEvents() {
  const ids = [...ops.events.keys()].sort((a, b) => b - a);
  for (const id of ids.slice(300)) ops.events.delete(id);
  const list = $('ops-events');
  list.replaceChildren();
  for (const id of ids.slice(0, 300)) {
    const e = ops.events.get(id);
    const li = document.createElement('li');
    const what = el('span', SERIOUS.has(e.event) ? 'what high' : 'what', EVENT_WORDS[e.event] || e.event);
    li.append(el('span', 'meta', time(e.ts) + '  '), what, ': ' + (REASON_WORDS[e.reason] || e.reason));
    const who = [];
    if (e.sub) who.push('agent ' + e.sub);
    if (e.by) who.push('by ' + e.by);
    if (e.peer) who.push('from ' + e.peer);
    if (who.length) li.append(el('div', 'meta', who.join(' · ')));
    list.append(li);
  }
}

for (const b of document.querySelectorAll('button.sort')) {
  b.onclick = () => {
    const key = b.dataset.key;
    ops.sort = { key, dir: ops.sort.key === key ? -ops.sort.dir : 1 };
    renderConns();
  };
}

// ---- wiring ----

$('login-form').onsubmit = (e) => {
  e.preventDefault();
  const f = e.target;
  login(f.username.value.trim(), f.password.value, f.otp.value.trim());
};

// With `since`: from the last update shown, or the last 20 for a channel
// not seen yet (SPEC §10).
function subscribe(channel) {
  const p = state.pos.get(channel);
  const since = p && p.epoch ? { epoch: p.epoch, offset: p.offset } : { last: 20 };
  const ref = send({ type: 'subscribe', channel, since });
  if (!ref) return;
  state.pending.set(ref, { kind: 'subscribe', channel });
  state.resuming.set(channel, since);
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
