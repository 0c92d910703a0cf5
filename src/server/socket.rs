//! One authenticated WebSocket: the welcome, client commands, the bounded
//! outbound queue, token expiry (notice, then 4001), pings, and closes
//! ordered by the hub (4003 revoked, 4008 slow consumer, 1001 shutdown).
//!
//! Fairness (SPEC §4.3): the socket task yields to the executor after
//! [`TURN_BUDGET`] client messages, so a publisher streaming commands cannot run ahead of
//! the subscribers it feeds. Every publish (WebSocket, `POST /publish`, the
//! demo ticker) goes through [`publish`], and WebSocket and HTTP publishers
//! first wait in [`room_for`] while a subscriber of the channel is at or
//! over `--queue-depth` and still making write progress. A socket whose
//! queue stays at or over the depth with no write progress for
//! [`STALL`], or whose queue reaches [`HARD_CAP_FACTOR`] × the depth, is
//! closed with 4008. Replies and replayed history do not count.
//!
//! Writing (issue 16): the task frames what it sends itself, into one buffer
//! under tungstenite ([`Outlet`]; server frames are unmasked, a 2–10 byte
//! header), and a batch leaves with one flush. tungstenite keeps the read
//! side, pongs and the close handshake; its writes and ours never
//! interleave inside a frame. Per batch (issue 11): the buffer is the
//! thread's one spare, a flush bypasses tungstenite when it holds nothing,
//! and its read path is not polled while the reactor reported nothing.

use super::{Shared, now_millis};
use crate::commands::now_unix;
use crate::events::Kind;
use crate::gate::Rejection;
use crate::hub::{ConnId, Frame, Offer, Outbox, PublishError, Published, Rights};
use crate::jwt::{self, Reject, VerifiedClaims};
use crate::metrics::add;
use crate::protocol::{self, Command, Reply};
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use event_listener::Event;
use futures_util::{SinkExt, StreamExt};
use smol::io::{AsyncRead, AsyncWrite};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How long a socket may sit at or over `--queue-depth` without the writer
/// taking its queue before it is closed with 4008.
pub const STALL: Duration = Duration::from_secs(3);

/// Bytes written within one batch that count as write progress.
const PROGRESS_BYTES: usize = 16 * 1024;

/// A live queue this many times `--queue-depth` long closes the socket at
/// once (4008), whatever its progress.
pub const HARD_CAP_FACTOR: usize = 4;

/// Where [`mono_ms`] counts from.
fn mono_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Monotonic milliseconds since the first call, on the loop turn's clock.
fn mono_ms() -> u64 {
    ms_at(crate::reactor::now())
}

/// [`mono_ms`] of an instant already read.
fn ms_at(t: Instant) -> u64 {
    t.saturating_duration_since(mono_start()).as_millis() as u64
}

thread_local! {
    /// [`mono_ms`] of the publish being fanned out ([`publish`]): each
    /// subscriber's queue takes it instead of reading the clock (issue 11).
    static FAN_OUT_MS: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Socket deadlines are kept to this grid: one sweep wakes every socket due
/// in it, so the sweeper's timer moves at most this often.
const ALARM_GRAIN_MS: u64 = 50;

/// Entries [`Alarms`] may hold beyond twice the live ones before a purge.
const PURGE_SLACK: usize = 1024;

/// One deadline in [`Alarms`]: a socket's, or a [`Sleep`]'s.
struct Alarm {
    at_ms: u64,
    target: Target,
}

enum Target {
    Socket(std::rc::Weak<ConnHandle>),
    Sleep(std::rc::Weak<SleepSlot>),
}

/// What a [`Sleep`] shares with [`Alarms`].
#[derive(Default)]
struct SleepSlot {
    fired: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

/// Resolves once `at` (rounded up to [`ALARM_GRAIN_MS`]) has passed, kept
/// by [`Alarms`]: no timer of its own (on async-io a timer insert cost an
/// eventfd write, a read and a re-arm; the grid still wakes the loop once
/// for every deadline in one [`ALARM_GRAIN_MS`]). Dropping it forgets the
/// deadline.
pub struct Sleep<'a> {
    alarms: &'a Alarms,
    at_ms: u64,
    slot: Option<Rc<SleepSlot>>,
}

impl Future for Sleep<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if mono_ms() >= self.at_ms {
            return Poll::Ready(());
        }
        let slot = match &self.slot {
            Some(s) => s.clone(),
            None => {
                let s = Rc::new(SleepSlot::default());
                self.alarms.push(self.at_ms, Target::Sleep(Rc::downgrade(&s)));
                self.slot = Some(s.clone());
                s
            }
        };
        if slot.fired.get() {
            return Poll::Ready(());
        }
        let w = match slot.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        slot.waker.set(Some(w));
        Poll::Pending
    }
}

/// `at` on the [`Alarms`] grid: the first grid point at or after it (a
/// socket woken before its deadline would not set the next one).
fn grid_ms(at: Instant) -> u64 {
    let d = at.saturating_duration_since(mono_start());
    let ms = d.as_millis() as u64 + u64::from(d.subsec_nanos() % 1_000_000 != 0);
    ms.div_ceil(ALARM_GRAIN_MS).saturating_mul(ALARM_GRAIN_MS)
}

impl PartialEq for Alarm {
    fn eq(&self, other: &Alarm) -> bool {
        self.at_ms == other.at_ms
    }
}
impl Eq for Alarm {}
impl PartialOrd for Alarm {
    fn partial_cmp(&self, other: &Alarm) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Alarm {
    fn cmp(&self, other: &Alarm) -> std::cmp::Ordering {
        // Earliest first out of the (max-)heap.
        other.at_ms.cmp(&self.at_ms)
    }
}

/// Every socket's next deadline (a ping, the token's expiry notice and
/// close, the once-a-second look), kept by one task with one reactor timer
/// ([`sweep_alarms`]): on async-io a timer per socket cost a reactor insert
/// (an eventfd write, a read and a re-arm) per handshake (issue 16); on
/// [`crate::reactor`] the grid still wakes the loop once for all the
/// deadlines in one grain. Deadlines are rounded up to [`ALARM_GRAIN_MS`];
/// a socket due is woken like by the hub.
pub struct Alarms {
    heap: RefCell<std::collections::BinaryHeap<Alarm>>,
    /// What the sweeper's timer is set to (`u64::MAX`: nothing).
    armed_ms: Cell<u64>,
    /// The heap's length after the last purge of dead entries.
    purged_len: Cell<usize>,
    /// Sockets ended since the last purge ([`Alarms::socket_ended`]).
    ended: Cell<usize>,
    /// Wakes the sweeper for a deadline earlier than `armed_ms`.
    wake: Wake,
}

impl Default for Alarms {
    fn default() -> Alarms {
        Alarms {
            heap: RefCell::default(),
            armed_ms: Cell::new(u64::MAX),
            purged_len: Cell::new(0),
            ended: Cell::new(0),
            wake: Wake::default(),
        }
    }
}

impl Alarms {
    /// Wakes `h`'s task at `at` (rounded up to the grid), instead of the
    /// deadline set before.
    fn set(&self, h: &Rc<ConnHandle>, at: Instant) {
        let ms = grid_ms(at);
        if h.alarm_ms.get() == ms {
            return;
        }
        h.alarm_ms.set(ms);
        self.push(ms, Target::Socket(Rc::downgrade(h)));
    }

    /// A future that resolves at `at` (rounded up to the grid); see [`Sleep`].
    pub fn sleep_until(&self, at: Instant) -> Sleep<'_> {
        Sleep {
            alarms: self,
            at_ms: grid_ms(at),
            slot: None,
        }
    }

    fn push(&self, at_ms: u64, target: Target) {
        let mut heap = self.heap.borrow_mut();
        heap.push(Alarm { at_ms, target });
        // A read that got its data drops its `Sleep` long before the
        // deadline (a handshake timeout is seconds away): once the heap has
        // doubled since the last purge, drop the dead entries, so it stays
        // within about twice the live deadlines however fast connections come.
        if heap.len() > 2 * self.purged_len.get() + PURGE_SLACK {
            purge(&mut heap);
            self.purged_len.set(heap.len());
        }
        drop(heap);
        if at_ms < self.armed_ms.get() {
            self.wake.notify();
        }
    }

    /// A socket ended: its deadline stays in the heap until it passes (it
    /// holds the socket's handle's allocation through a `Weak`). Once the
    /// sockets that ended since the last purge are half the heap, drop the
    /// dead entries and give back the heap's spare room, so that a spike of
    /// sockets that all closed leaves no memory behind (amortised O(1) per
    /// socket).
    pub fn socket_ended(&self) {
        let ended = self.ended.get() + 1;
        self.ended.set(ended);
        let mut heap = self.heap.borrow_mut();
        if heap.len() < 64 || ended * 2 < heap.len() {
            return;
        }
        purge(&mut heap);
        let len = heap.len();
        if heap.capacity() > 64 && len < heap.capacity() / 4 {
            heap.shrink_to(len * 2);
        }
        self.purged_len.set(len);
        self.ended.set(0);
    }

    /// Wakes every socket due at `now_ms`; the next deadline, if any.
    fn fire(&self, now_ms: u64) -> Option<u64> {
        let mut heap = self.heap.borrow_mut();
        let mut fired = false;
        let next = loop {
            match heap.peek() {
                Some(top) if top.at_ms > now_ms => break Some(top.at_ms),
                None => break None,
                Some(_) => {}
            }
            let Some(a) = heap.pop() else { break None };
            fired = true;
            match a.target {
                // A socket gone, or one that set another deadline since: nothing.
                Target::Socket(h) => {
                    if let Some(h) = h.upgrade()
                        && h.alarm_ms.get() == a.at_ms
                    {
                        h.alarm_ms.set(u64::MAX);
                        h.wake.notify();
                    }
                }
                Target::Sleep(s) => {
                    if let Some(s) = s.upgrade() {
                        s.fired.set(true);
                        if let Some(w) = s.waker.take() {
                            w.wake();
                        }
                    }
                }
            }
        };
        let len = heap.len();
        if fired && heap.capacity() > 64 && len < heap.capacity() / 4 {
            heap.shrink_to(len * 2);
        }
        self.purged_len.set(self.purged_len.get().min(len));
        next
    }
}

/// Drops the dead entries: a socket gone or with another deadline set
/// since, a [`Sleep`] dropped.
fn purge(heap: &mut std::collections::BinaryHeap<Alarm>) {
    heap.retain(|a| match &a.target {
        Target::Socket(h) => h.upgrade().is_some_and(|h| h.alarm_ms.get() == a.at_ms),
        Target::Sleep(s) => s.strong_count() > 0,
    });
}

/// The task behind [`Alarms`]: sleeps until the earliest deadline (or until
/// an earlier one is set), wakes the sockets due.
pub async fn sweep_alarms(shared: Rc<Shared>) {
    let alarms = &shared.alarms;
    let mut timer = crate::reactor::Timer::never();
    let mut timer_ms = u64::MAX;
    loop {
        alarms.wake.clear();
        let next = alarms.fire(mono_ms()).unwrap_or(u64::MAX);
        alarms.armed_ms.set(next);
        if next != timer_ms {
            timer_ms = next;
            if next == u64::MAX {
                timer = crate::reactor::Timer::never();
            } else {
                timer.set_at(mono_start() + Duration::from_millis(next));
            }
        }
        smol::future::or(
            async {
                (&mut timer).await;
                // Fired: set it again even for the same instant.
                timer_ms = u64::MAX;
            },
            alarms.wake.wait(),
        )
        .await;
    }
}

/// The socket task's wake-up call: set when a frame is queued or a close is
/// ordered, taken by the task. Only the socket's own task waits on it, so
/// one waker slot does instead of an event list: a wait allocates nothing
/// and takes no lock (it runs once per delivered batch).
#[derive(Default)]
struct Wake {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Wake {
    fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.take() {
            w.wake_by_ref();
            self.waker.set(Some(w));
        }
    }

    /// Forgets a wake-up already given: call it before looking at what it
    /// signals (the queue, the close order), then [`Wake::wait`].
    fn clear(&self) {
        self.set.set(false);
    }

    /// Resolves once [`Wake::notify`] was called since the last clear or
    /// resolution.
    fn wait(&self) -> WakeWait<'_> {
        WakeWait(self)
    }
}

struct WakeWait<'a>(&'a Wake);

impl Future for WakeWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.set.replace(false) {
            return Poll::Ready(());
        }
        let w = match self.0.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        self.0.waker.set(Some(w));
        Poll::Pending
    }
}

/// A socket's outbound queue and its close order, shared with the hub.
pub struct ConnHandle {
    queue: RefCell<VecDeque<Frame>>,
    /// `--queue-depth`.
    depth: u32,
    /// Frames at the queue's end that do not count against the depth
    /// (subscribe replies and replayed history); reset when the queue is taken.
    uncounted: Cell<u32>,
    /// When the queue last became non-empty or was taken by the writer
    /// ([`mono_ms`]): how long the oldest waiting frame has waited.
    progress_ms: Cell<u64>,
    /// Listed in [`Shared::congested`].
    congested: Cell<bool>,
    wake: Wake,
    close: Cell<Option<(u16, &'static str)>>,
    /// The session of the token the socket holds now.
    sid: RefCell<Option<String>>,
    /// What `GET /admin/connections` shows (SPEC §13).
    peer: SocketAddr,
    since_ms: u64,
    messages_in: Cell<u64>,
    messages_out: Cell<u64>,
    /// The socket's deadline in [`Alarms`] (`u64::MAX`: none set).
    alarm_ms: Cell<u64>,
}

impl ConnHandle {
    fn new(depth: usize, peer: SocketAddr, since_ms: u64) -> ConnHandle {
        ConnHandle {
            queue: RefCell::default(),
            depth: u32::try_from(depth).unwrap_or(u32::MAX),
            uncounted: Cell::new(0),
            progress_ms: Cell::new(mono_ms()),
            congested: Cell::new(false),
            wake: Wake::default(),
            close: Cell::new(None),
            sid: RefCell::default(),
            peer,
            since_ms,
            messages_in: Cell::new(0),
            messages_out: Cell::new(0),
            alarm_ms: Cell::new(u64::MAX),
        }
    }

    /// Queued live messages (what the depth limits).
    fn live_len(&self) -> usize {
        self.queue.borrow().len().saturating_sub(self.uncounted.get() as usize)
    }

    /// Frames everything queued, oldest first, into `out`; returns how
    /// many. A congested socket taking its queue makes room: waiting
    /// publishers are woken.
    fn take_queued(&self, room: &Event, out: &mut Framed, now_ms: u64) -> u64 {
        let mut q = self.queue.borrow_mut();
        if q.is_empty() {
            return 0;
        }
        self.uncounted.set(0);
        self.progress_ms.set(now_ms);
        let n = q.len() as u64;
        out.reserve(q.iter().map(|f| f.len() + MAX_HEADER).sum());
        for f in q.drain(..) {
            out.push_text(f.as_bytes());
        }
        if self.congested.get() {
            room.notify(usize::MAX);
        }
        n
    }

    /// What an operator sees of this socket (SPEC §13).
    pub fn stats(&self) -> Stats {
        Stats {
            peer: self.peer,
            since_ms: self.since_ms,
            messages_in: self.messages_in.get(),
            messages_out: self.messages_out.get(),
            queued: self.queue.borrow().len(),
        }
    }

    /// The session of the token the socket holds now.
    pub fn session(&self) -> Option<String> {
        self.sid.borrow().clone()
    }

    /// Whether a close was ordered.
    pub fn closing(&self) -> bool {
        self.close.get().is_some()
    }

    /// Orders the socket closed with `code` (the first order wins).
    pub fn close(&self, code: u16, reason: &'static str) {
        if self.close.get().is_none() {
            self.close.set(Some((code, reason)));
        }
        self.wake.notify();
    }
}

/// A socket's numbers for `GET /admin/connections`.
pub struct Stats {
    pub peer: SocketAddr,
    /// Unix milliseconds of the upgrade.
    pub since_ms: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    /// Frames waiting to be written.
    pub queued: usize,
}

impl Outbox for Rc<ConnHandle> {
    fn offer(&self, msg: &Frame) -> Offer {
        let mut q = self.queue.borrow_mut();
        let live = q.len().saturating_sub(self.uncounted.get() as usize);
        let depth = self.depth as usize;
        if live >= depth.saturating_mul(HARD_CAP_FACTOR) {
            return Offer::Full;
        }
        let was_empty = q.is_empty();
        q.push_back(msg.clone());
        drop(q);
        // The task drains the whole queue and checks it again before it
        // sleeps, so only the first frame of a backlog needs to wake it.
        if was_empty {
            self.progress_ms.set(FAN_OUT_MS.get().unwrap_or_else(mono_ms));
            self.wake.notify();
        }
        if live + 1 >= depth {
            Offer::Congested
        } else {
            Offer::Queued
        }
    }

    fn resume(&self, channel: &str, after: u64, rejoined: bool, head: Frame, replay: Vec<(u64, Frame)>) {
        let mut q = self.queue.borrow_mut();
        let before = q.len();
        crate::hub::splice_resume(&mut q, channel, after, rejoined, head, replay);
        let added = q.len().saturating_sub(before);
        self.uncounted.set(
            self.uncounted
                .get()
                .saturating_add(u32::try_from(added).unwrap_or(u32::MAX)),
        );
        drop(q);
        if before == 0 {
            self.progress_ms.set(mono_ms());
            self.wake.notify();
        }
    }
}

/// The longest frame header we write: a server frame is unmasked, so 2
/// bytes, 4 past 125 bytes of payload, 10 past 65535 (RFC 6455 §5.2).
const MAX_HEADER: usize = 10;

/// Frames the socket task writes itself, framed into one buffer: a batch
/// leaves in one write, with no per-frame work in tungstenite (issue 16).
/// The buffer is given back once written, so an idle socket holds none.
#[derive(Default)]
pub struct Framed {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pos: usize,
    /// Bytes written since write progress was last marked.
    unmarked: usize,
}

thread_local! {
    /// The thread's spare frame buffer: an empty [`Framed`] takes it, and a
    /// batch written in full gives it back. Most batches leave in one write,
    /// so one buffer serves every socket in turn: no allocation and free per
    /// batch (about 1,500 instructions each, issue 11), and still none held
    /// by an idle socket. Only a write that has to wait keeps its own.
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The largest spare buffer kept (a big replay's is freed instead).
const SPARE_MAX: usize = 256 * 1024;

impl Framed {
    fn reserve(&mut self, bytes: usize) {
        if self.buf.capacity() == 0 {
            self.buf = SPARE.take();
        }
        self.buf.reserve(bytes);
    }

    /// Gives a written buffer back as the thread's spare (the larger of the
    /// two is kept, up to [`SPARE_MAX`]).
    fn give_back(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        self.pos = 0;
        if buf.capacity() == 0 || buf.capacity() > SPARE_MAX {
            return;
        }
        buf.clear();
        SPARE.with(|spare| {
            let old = spare.take();
            spare.set(if old.capacity() >= buf.capacity() { old } else { buf });
        });
    }

    /// Appends one text frame (FIN, opcode 1, unmasked).
    fn push_text(&mut self, payload: &[u8]) {
        let n = payload.len();
        if self.buf.capacity() == 0 {
            self.reserve(n + MAX_HEADER);
        }
        if n < 126 {
            self.buf.extend_from_slice(&[0x81, n as u8]);
        } else if let Ok(short) = u16::try_from(n) {
            self.buf.extend_from_slice(&[0x81, 126]);
            self.buf.extend_from_slice(&short.to_be_bytes());
        } else {
            self.buf.extend_from_slice(&[0x81, 127]);
            self.buf.extend_from_slice(&(n as u64).to_be_bytes());
        }
        self.buf.extend_from_slice(payload);
    }

    /// Appends an empty ping.
    fn push_ping(&mut self) {
        if self.buf.capacity() == 0 {
            self.reserve(2);
        }
        self.buf.extend_from_slice(&[0x89, 0]);
    }

    /// Bytes not written yet.
    fn pending(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

/// The socket's stream under tungstenite, with [`Framed`]: what the task
/// framed (at first the `101` answer, which then leaves in one write with
/// the `welcome`) is written before tungstenite's next write, or on a
/// flush; never while tungstenite may be inside a frame (it wrote since
/// its last flush, and tungstenite flushes only with its buffer empty), and
/// once started it is finished before tungstenite writes again.
pub struct Outlet<S> {
    out: Framed,
    /// tungstenite wrote since it last flushed (a pong or a close may be
    /// half written): [`Framed`] waits for the flush.
    tung_dirty: bool,
    /// A write or flush had to wait since the last flush that finished:
    /// tungstenite may hold bytes it could not write (a pong), so its own
    /// flush and reads must run ([`Outlet::poll_input`], [`poll_flush_all`]).
    blocked: bool,
    /// Where write progress inside a long batch is marked.
    handle: Option<Rc<ConnHandle>>,
    inner: S,
}

impl<S> Outlet<S> {
    /// `head` (the `101` answer) is written first, with the first frame.
    pub fn new(inner: S, head: Vec<u8>) -> Outlet<S> {
        Outlet {
            out: Framed {
                buf: head,
                pos: 0,
                unmarked: 0,
            },
            tung_dirty: false,
            blocked: false,
            handle: None,
            inner,
        }
    }
}

/// A stream that can say whether it became readable without reading.
pub trait Readiness {
    /// `Ready` once readable (or in error); registers `cx`'s waker if not.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;
}

/// Plain TCP: readiness comes from the reactor. TLS buffers records, so it
/// must always be read.
impl<T> Readiness for crate::tls::MaybeTls<crate::reactor::Tcp, T> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self {
            crate::tls::MaybeTls::Plain(p) => p.poll_readable(cx),
            crate::tls::MaybeTls::Tls(_) => Poll::Ready(Ok(())),
        }
    }
}

impl<S: AsyncWrite + Unpin> Outlet<S> {
    /// tungstenite's write: after what [`Framed`] holds, unless tungstenite
    /// is inside a frame of its own.
    fn write(&mut self, cx: &mut Context<'_>, b: &[u8]) -> Poll<std::io::Result<usize>> {
        if !self.tung_dirty {
            std::task::ready!(self.drain(cx))?;
        }
        let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, b))?;
        if n > 0 {
            self.tung_dirty = true;
        }
        Poll::Ready(Ok(n))
    }

    /// Writes what [`Framed`] holds; `Ready(Ok)` once nothing is.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let out = &mut self.out;
        while out.pending() > 0 {
            let rest = out.buf.get(out.pos..).unwrap_or_default();
            match Pin::new(&mut self.inner).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    let n = n.min(rest.len());
                    out.pos += n;
                    out.unmarked += n;
                    // Write progress inside a long batch (a big replay on a
                    // slow link) counts too.
                    if out.unmarked >= PROGRESS_BYTES {
                        out.unmarked = 0;
                        if let Some(h) = &self.handle {
                            h.progress_ms.set(mono_ms());
                        }
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        out.give_back();
        Poll::Ready(Ok(()))
    }
}

impl<S: Readiness> Outlet<S> {
    /// `Ready` when a read of the socket may find something. `Pending`, with
    /// `cx`'s waker registered, while the last read found nothing and the
    /// reactor has reported nothing since (and no write of tungstenite's
    /// waits: its next read would retry it): then a poll of tungstenite's
    /// stream would only find that out again, at the cost of its read and
    /// flush path (once per delivered batch, issue 11).
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.blocked {
            return Poll::Ready(());
        }
        self.inner.poll_readable(cx).map(|_| ())
    }
}

/// Reads go straight to the socket: the reactor answers a read of a
/// socket that found nothing last time, with nothing reported since,
/// without a `recvfrom` (issue 16: 40 per 1000 deliveries, the floor 6).
impl<S: AsyncRead + Unpin> AsyncRead for Outlet<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &mut [u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, b)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Outlet<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<std::io::Result<usize>> {
        let me = &mut *self;
        let r = me.write(cx, b);
        me.blocked |= r.is_pending();
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // tungstenite flushes only once its own buffer is written.
        self.tung_dirty = false;
        let me = &mut *self;
        let r = match me.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut me.inner).poll_flush(cx),
            other => other,
        };
        me.blocked = r.is_pending();
        r
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.tung_dirty {
            std::task::ready!(self.drain(cx))?;
        }
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Closes a slow consumer with 4008 (once).
fn close_slow(shared: &Shared, h: &ConnHandle) {
    if h.close.get().is_none() {
        add(&shared.metrics.slow_consumers, 1);
        h.close(4008, "slow consumer");
    }
}

/// After a publish: count deliveries, close sockets at their hard cap with
/// 4008 and list the congested ones for [`room_for`].
pub fn after_publish(shared: &Shared, p: &Published) {
    add(&shared.metrics.messages_out, p.delivered as u64);
    if p.slow.is_empty() && p.congested.is_empty() {
        return;
    }
    let hub = shared.hub.borrow();
    for id in &p.slow {
        if let Some(h) = hub.outbox(*id) {
            close_slow(shared, h);
        }
    }
    let mut list = shared.congested.borrow_mut();
    for id in &p.congested {
        if let Some(h) = hub.outbox(*id)
            && !h.congested.get()
        {
            h.congested.set(true);
            list.push((*id, h.clone()));
        }
    }
}

/// Whether a publish to `channel` must wait (SPEC §4.3 fairness:
/// publishers go no faster than their readers): some subscriber of it other
/// than `me` is at or over its queue depth and still making write progress.
/// Subscribers over the depth whose queue has not been taken for [`STALL`]
/// are closed with 4008 here instead of waited for, so every wait is bounded.
fn must_wait(shared: &Shared, channel: &str, me: Option<ConnId>) -> bool {
    if shared.congested.borrow().is_empty() {
        return false;
    }
    let now = mono_ms();
    let stall = STALL.as_millis() as u64;
    let mut hold = false;
    let hub = shared.hub.borrow();
    shared.congested.borrow_mut().retain(|(id, h)| {
        let keep = if h.close.get().is_some() || h.live_len() < h.depth as usize {
            false
        } else if now.saturating_sub(h.progress_ms.get()) >= stall {
            close_slow(shared, h);
            false
        } else {
            hold |= Some(*id) != me && hub.is_subscribed(*id, channel);
            true
        };
        if !keep {
            h.congested.set(false);
        }
        keep
    });
    hold
}

/// How often a waiting publisher looks again without being woken (to
/// notice a stall).
const RECHECK: Duration = Duration::from_millis(100);

/// `POST /publish`: waits until [`must_wait`] says go.
pub async fn room_for(shared: &Shared, channel: &str) {
    loop {
        let listener = shared.room.listen();
        if !must_wait(shared, channel, None) {
            return;
        }
        smol::future::or(listener, async {
            crate::reactor::Timer::after(RECHECK).await;
        })
        .await;
    }
}

/// A WebSocket publisher waits like [`room_for`], but keeps writing its
/// own queue meanwhile: it may be a subscriber others wait for.
async fn room_for_socket<S>(
    shared: &Shared,
    handle: &ConnHandle,
    ws: &mut Ws<S>,
    me: ConnId,
    channel: &str,
    sent: &mut u64,
    deadline: Instant,
) -> Wrote
where
    S: AsyncRead + AsyncWrite + Readiness + Unpin,
{
    loop {
        if handle.close.get().is_some() {
            return Wrote::Closed;
        }
        if Instant::now() >= deadline {
            return Wrote::Deadline;
        }
        let room = shared.room.listen();
        handle.wake.clear();
        if !must_wait(shared, channel, Some(me)) {
            return Wrote::Done;
        }
        let texts = handle.take_queued(&shared.room, &mut ws.get_mut().out, mono_ms());
        if texts > 0 {
            let wrote = write_all(ws, handle, texts, sent, deadline).await;
            if wrote != Wrote::Done {
                return wrote;
            }
            continue;
        }
        smol::future::or(smol::future::or(room, handle.wake.wait()), async {
            crate::reactor::Timer::after(RECHECK.min(deadline.saturating_duration_since(Instant::now()))).await;
        })
        .await;
    }
}

/// Publishes through the hub: appends to the durable history first (when
/// `--history-dir` is set), then fans out. An append failure sends nothing
/// and is logged; the caller answers `history_unavailable`.
pub fn publish(
    shared: &Shared,
    rights: &Rights,
    channel: &str,
    data: &serde_json::value::RawValue,
) -> Result<Published, PublishError<std::io::Error>> {
    let mut disk = shared.disk.borrow_mut();
    let result = shared
        .hub
        .borrow_mut()
        .publish_with(rights, channel, data, now_millis(), |rec| {
            let stored = match disk.as_mut() {
                Some(log) => log.append(crate::history::disk::RecordRef {
                    channel: rec.channel,
                    epoch: rec.epoch,
                    offset: rec.offset,
                    ts_ms: rec.ts_ms,
                    frame: rec.frame,
                }),
                None => Ok(()),
            };
            // Read once the append is done: the fan-out follows at once.
            FAN_OUT_MS.set(Some(mono_ms()));
            stored
        });
    FAN_OUT_MS.set(None);
    let appended = disk.is_some();
    drop(disk);
    match &result {
        Ok(p) => {
            if appended {
                shared.disk_dirty.notify(1);
            }
            after_publish(shared, p)
        }
        Err(PublishError::Store(e)) => shared.log.warn(
            "history_append_failed",
            &[("channel", channel.into()), ("error", (&e.to_string()).into())],
        ),
        Err(PublishError::Denied(_)) => {}
    }
    result
}

/// Closes every socket of a revoked session with 4003.
pub fn close_session(shared: &Shared, sid: &str) {
    for (_, h) in shared.hub.borrow().outboxes() {
        if h.sid.borrow().as_deref() == Some(sid) {
            h.close(4003, "session revoked");
        }
    }
}

/// Removes the socket from the hub however its task ends.
struct Membership {
    shared: Rc<Shared>,
    id: ConnId,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.shared.hub.borrow_mut().leave(self.id);
    }
}

enum Ev {
    In(Option<Result<Message, WsError>>),
    /// The hub queued something or ordered a close, or a deadline is due.
    Wake,
}

/// How a write ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wrote {
    Done,
    /// The hub ordered the socket closed before the write finished.
    Closed,
    /// The token's expiry or the pong deadline passed before the write
    /// finished (a peer that does not read cannot outlive either).
    Deadline,
    Failed,
}

/// A socket's WebSocket stream, over its [`Outlet`].
type Ws<S> = WebSocketStream<Outlet<S>>;

/// Writes what the task framed (`texts` text frames among it) with one
/// flush, and counts them as sent.
/// A close order interrupts it: a peer that stopped reading must not keep
/// the task in a write that 4008, 4003 or 1001 cannot cut short. So does
/// `deadline` ([`Timers::write_deadline`]: the token's expiry, the pong
/// deadline). Most batches fit in the socket's send buffer and finish in
/// one poll; only a write that has to wait arms the timer and the close
/// watch (a timer per batch cost two reactor operations per delivery).
///
/// A block, not an `async fn`: an `async fn` keeps its arguments twice in
/// its future, and this one sits in every open socket's.
#[allow(clippy::manual_async_fn)]
fn write_all<'a, S>(
    ws: &'a mut Ws<S>,
    handle: &'a ConnHandle,
    texts: u64,
    sent: &'a mut u64,
    deadline: Instant,
) -> impl Future<Output = Wrote> + 'a
where
    S: AsyncRead + AsyncWrite + Readiness + Unpin,
{
    async move {
        // tungstenite holds nothing unwritten (or a pong not tried yet,
        // which its next read sends): our frames go out without its flush
        // path (its wakers and state, once per delivered batch). Chosen once
        // per write, as a write that has to wait goes on the way it began.
        // One poll first, with no state kept across it.
        let (first, plain) = std::future::poll_fn(|cx| {
            let o = ws.get_ref();
            let plain = !o.tung_dirty && !o.blocked;
            Poll::Ready((poll_flush_all(ws, plain, cx), plain))
        })
        .await;
        let wrote = match first {
            Poll::Ready(done) => done,
            // Boxed: the waiting write's state must not size every socket's task.
            Poll::Pending => {
                let write = std::future::poll_fn(move |cx| poll_flush_all(ws, plain, cx));
                Box::pin(write_or_cut(write, handle, deadline)).await
            }
        };
        if wrote == Wrote::Done {
            *sent += texts;
            handle.messages_out.set(*sent);
        }
        wrote
    }
}

/// Flushes what the task framed, and with `plain == false` tungstenite first
/// (a pong it owes). A flush keeps no state between polls (the buffers do),
/// so polling it again later, or from another future, goes on where it
/// stopped.
fn poll_flush_all<S>(ws: &mut Ws<S>, plain: bool, cx: &mut Context<'_>) -> Poll<Wrote>
where
    S: AsyncRead + AsyncWrite + Readiness + Unpin,
{
    let ok = if plain {
        std::task::ready!(Pin::new(ws.get_mut()).poll_flush(cx)).is_ok()
    } else {
        std::task::ready!(futures_util::Sink::<Message>::poll_flush(Pin::new(&mut *ws), cx)).is_ok()
    };
    // A closed tungstenite reports a flush as done without writing.
    Poll::Ready(if ok && ws.get_ref().out.pending() == 0 {
        Wrote::Done
    } else {
        Wrote::Failed
    })
}

/// A write that has to wait, raced against a close order and `deadline`.
async fn write_or_cut<F>(write: F, handle: &ConnHandle, deadline: Instant) -> Wrote
where
    F: Future<Output = Wrote>,
{
    let killed = async {
        loop {
            if handle.close.get().is_some() {
                return Wrote::Closed;
            }
            handle.wake.wait().await;
        }
    };
    let expired = async {
        crate::reactor::Timer::at(deadline).await;
        Wrote::Deadline
    };
    smol::future::or(smol::future::or(write, killed), expired).await
}

/// Client messages a socket handles before it yields to the other tasks
/// (SPEC §4.3 fairness). Well under `--queue-depth`'s default, so one turn
/// of a publisher cannot fill a reader's queue; large enough that the
/// subscribers a burst feeds write many frames per syscall.
const TURN_BUDGET: u32 = 64;

/// Runs an accepted socket until it closes; the socket's own task.
/// `counted` (its places under the connection caps) is given back when it
/// ends.
///
/// The set-up is done before the task's future is made, and the future
/// captures only what the loop needs (the token's expiry and session, not
/// its claims; the peer's address is in its `ConnHandle`, not kept as text): the future lives as
/// long as the socket, and every byte of it counts per idle socket.
pub fn run<S>(
    shared: Rc<Shared>,
    mut ws: Ws<S>,
    claims: VerifiedClaims,
    peer: SocketAddr,
    counted: super::conn::Counted,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Readiness + Unpin,
{
    let id = shared.next_id();
    let started = mono_ms();
    let cfg = &shared.cfg;
    let handle = Rc::new(ConnHandle::new(cfg.queue_depth, peer, now_millis()));
    let operator = super::admin::is_operator(cfg, &claims);
    let exp_secs = claims.exp_secs();
    let mut timers = Timers::new(&claims, cfg.gate.verify.leeway, cfg.ping_interval);
    // The claims' strings move into the rights and the handle: no copies.
    let mut claims = claims.into_inner();
    *handle.sid.borrow_mut() = claims.sid.take();
    let mut rights = Rights::take_from(&mut claims);
    drop(claims);
    shared.hub.borrow_mut().join(id, rights.clone(), handle.clone());
    shared.hub.borrow_mut().set_operator(id, operator);
    let member = Membership {
        shared: shared.clone(),
        id,
    };
    // Upgraded after the shutdown's close pass (its head came in during
    // it): closed like every other socket (SPEC §5), after its welcome.
    if shared.shutting_down.get() {
        handle.close(1001, "server shutting down");
    }
    shared.log.info(
        "ws_accept",
        &[
            ("conn", id.into()),
            ("sub", (&rights.sub).into()),
            ("clearance", u64::from(rights.clearance).into()),
            ("peer", (&peer).into()),
        ],
    );
    ws.get_mut().handle = Some(handle.clone());
    let welcome = protocol::welcome(
        &rights.sub,
        rights.clearance,
        exp_secs,
        concat!("tessera/", env!("TESSERA_VERSION")),
    );
    ws.get_mut().out.push_text(welcome.as_bytes());
    drop(welcome);
    let mut budget = Budget::new(cfg.max_commands_per_sec, mono_ms());
    async move {
        // Referenced, not moved: captured once, dropped with the task.
        let _counted = &counted;
        let shared = &member.shared;
        let cfg = &shared.cfg;
        let (mut msgs_in, mut msgs_out) = (0u64, 0u64);
        const OPEN: (u16, &str) = (1000, "");
        let mut code: (u16, &'static str) = OPEN;
        let mut awaiting_pong = false;
        let mut wrote = write_all(
            &mut ws,
            &handle,
            1,
            &mut msgs_out,
            timers.write_deadline(awaiting_pong, cfg.ping_interval),
        )
        .await;

        // The deadline set in `Alarms`, moved only when the next one is
        // earlier than the one set (or after it passed). Set on the first turn.
        let mut alarm_at = crate::reactor::now();
        let mut turn_left = TURN_BUDGET;

        loop {
            // A close order wins over everything, also one that cut a write short.
            if let Some(order) = handle.close.get() {
                code = order;
                break;
            }
            if wrote == Wrote::Failed {
                code = (1006, "write failed");
                break;
            }
            if wrote == Wrote::Deadline {
                code = if now_unix() >= timers.close_at {
                    (4001, "token expired")
                } else {
                    (1006, "no pong")
                };
                break;
            }

            // Queued frames and what the timers add go out in one write.
            // One reading of each clock per turn.
            let mono = crate::reactor::now();
            let now = now_unix();
            let mut texts = handle.take_queued(&shared.room, &mut ws.get_mut().out, ms_at(mono));
            if now >= timers.close_at {
                code = (4001, "token expired");
                break;
            }
            if !timers.notice_sent && now >= timers.notice_at() {
                timers.notice_sent = true;
                let notice = Reply {
                    kind: "expiring",
                    expires_at: Some(timers.exp_secs),
                    ..Reply::default()
                };
                ws.get_mut().out.push_text(notice.to_json().as_bytes());
                texts += 1;
            }
            // A ping unanswered by the next one closes the socket, but only
            // after a look at input already waiting: a long write may have kept
            // the pong unread.
            let mut pong_overdue = false;
            if mono >= timers.ping_at {
                if awaiting_pong {
                    pong_overdue = true;
                } else {
                    awaiting_pong = true;
                    timers.ping_at = mono + cfg.ping_interval;
                    ws.get_mut().out.push_ping();
                }
            }
            if ws.get_ref().out.pending() > 0 {
                let deadline = timers.write_deadline_at(awaiting_pong, cfg.ping_interval, now, mono);
                wrote = write_all(&mut ws, &handle, texts, &mut msgs_out, deadline).await;
                if wrote != Wrote::Done {
                    continue;
                }
                // No `continue` otherwise: under a steady stream the queue may
                // never be empty here, and the client's input (a refresh, a
                // pong) must still get its turn after every batch.
            }

            let next = timers.next_deadline(now, mono);
            // Also when no deadline is set any more (it fired): never sleep
            // without one.
            if next < alarm_at || mono >= alarm_at || handle.alarm_ms.get() == u64::MAX {
                alarm_at = next;
                shared.alarms.set(&handle, next);
            }
            let busy = || handle.close.get().is_some() || !handle.queue.borrow().is_empty();
            let ev = if pong_overdue || busy() {
                // Take input that is already there, don't wait.
                let input = async {
                    std::future::poll_fn(|cx| ws.get_mut().poll_input(cx)).await;
                    Ev::In(ws.next().await)
                };
                smol::future::or(input, async { Ev::Wake }).await
            } else {
                handle.wake.clear();
                if busy() {
                    continue;
                }
                // The hub's wake-up (or the alarm's) first: it needs no look at
                // the socket.
                smol::future::or(
                    async {
                        handle.wake.wait().await;
                        Ev::Wake
                    },
                    async {
                        std::future::poll_fn(|cx| ws.get_mut().poll_input(cx)).await;
                        Ev::In(ws.next().await)
                    },
                )
                .await
            };
            // What the event asks is decided without a wait: the message and
            // its parse end in this statement and take no room in this
            // future, which every open socket holds for its whole life.
            let mut took_input = false;
            let (replies, wait) = match take_event(
                ev,
                shared,
                &handle,
                member.id,
                &mut rights,
                &mut timers,
                &mut budget,
                &mut msgs_in,
            ) {
                Step::Wake => (Vec::new(), None),
                Step::Close(c) => {
                    code = c;
                    (Vec::new(), None)
                }
                Step::Replies(r) => {
                    awaiting_pong = false;
                    took_input = true;
                    (r, None)
                }
                Step::Wait(w) => {
                    awaiting_pong = false;
                    took_input = true;
                    (Vec::new(), Some(w))
                }
            };
            let replies = match wait {
                None => replies,
                // Boxed: the wait's state must not size every socket's task.
                Some(w) => {
                    let deadline = timers.write_deadline(awaiting_pong, cfg.ping_interval);
                    let waited = waited(
                        shared,
                        &handle,
                        &mut ws,
                        member.id,
                        &mut rights,
                        &mut timers,
                        &mut msgs_out,
                        deadline,
                        w,
                    );
                    let (w, replies) = Box::pin(waited).await;
                    wrote = w;
                    replies
                }
            };
            if !replies.is_empty() && wrote == Wrote::Done {
                // Frames queued before the command go out before its
                // replies: no `message` from a channel after its
                // `unsubscribed`.
                let out = &mut ws.get_mut().out;
                let mut texts = handle.take_queued(&shared.room, out, mono_ms());
                for r in &replies {
                    out.push_text(r.as_bytes());
                }
                texts += replies.len() as u64;
                let deadline = timers.write_deadline(awaiting_pong, cfg.ping_interval);
                wrote = write_all(&mut ws, &handle, texts, &mut msgs_out, deadline).await;
            }
            if code != OPEN {
                break;
            }
            if pong_overdue && awaiting_pong {
                code = (1006, "no pong");
                break;
            }
            // A bounded amount of client input per turn (SPEC §4.3): after
            // `TURN_BUDGET` messages the others (the subscribers a burst just
            // fed) run before this socket reads more. Not one message per turn:
            // the subscribers would then write each frame with its own syscall.
            if took_input {
                turn_left -= 1;
                if turn_left == 0 {
                    turn_left = TURN_BUDGET;
                    smol::future::yield_now().await;
                }
            }
        }

        // The closing handshake (RFC 6455 §7.1.2), bounded by a short timeout:
        // answer the peer's close, or send ours, then read until the peer's
        // close arrives so the TCP connection ends cleanly.
        if code.0 != 1006 {
            let client_closed = code == (1000, "client closed");
            let finish = async {
                if client_closed {
                    let _ = ws.flush().await;
                } else {
                    let frame = CloseFrame {
                        code: CloseCode::from(code.0),
                        reason: code.1.into(),
                    };
                    let _ = ws.close(Some(frame)).await;
                }
                while let Some(Ok(_)) = ws.next().await {}
            };
            // Boxed: this is the socket future's largest state, and only a
            // closing socket needs it (an idle socket's future stays in a
            // smaller allocator size class).
            Box::pin(smol::future::or(finish, async {
                crate::reactor::Timer::after(Duration::from_secs(1)).await;
            }))
            .await;
        }
        if code.0 == 4008 {
            let sub = Some(rights.sub.as_str());
            let peer_s = crate::log::addr_text(&handle.peer);
            super::admin::security_event(shared, Kind::SlowConsumer, "queue_over_depth", Some(&peer_s), sub, None);
        }
        shared.log.info(
            "ws_close",
            &[
                ("conn", member.id.into()),
                ("sub", (&rights.sub).into()),
                ("code", u64::from(code.0).into()),
                ("reason", code.1.into()),
                ("duration_ms", mono_ms().saturating_sub(started).into()),
                ("messages_in", msgs_in.into()),
                ("messages_out", msgs_out.into()),
                ("peer", (&handle.peer).into()),
            ],
        );
        shared.alarms.socket_ended();
    }
}

/// When the socket must act next.
struct Timers {
    /// The token's `exp`, whole Unix seconds.
    exp_secs: u64,
    /// `expiring` was sent ([`Timers::notice_at`]).
    notice_sent: bool,
    /// Unix seconds: close 4001 (`exp + leeway`, when the handshake would refuse).
    close_at: u64,
    ping_at: Instant,
}

impl Timers {
    fn new(claims: &jwt::Claims, leeway: u64, ping: Duration) -> Timers {
        let mut t = Timers {
            exp_secs: 0,
            notice_sent: false,
            close_at: 0,
            ping_at: crate::reactor::now() + ping,
        };
        t.reset(claims, leeway);
        t
    }

    fn reset(&mut self, claims: &jwt::Claims, leeway: u64) {
        self.exp_secs = claims.exp_secs();
        self.notice_sent = false;
        self.close_at = claims.expires_at_with_leeway(leeway);
    }

    /// Unix seconds: send `expiring` (60 s before `exp`).
    fn notice_at(&self) -> u64 {
        self.exp_secs.saturating_sub(60)
    }

    /// How long a write may take: until the token's `close_at` (4001) or
    /// the pong deadline (the next ping when one is unanswered, else the
    /// one after), whichever is first.
    fn write_deadline(&self, awaiting_pong: bool, ping: Duration) -> Instant {
        self.write_deadline_at(awaiting_pong, ping, now_unix(), crate::reactor::now())
    }

    /// [`Timers::write_deadline`] with the clocks read already.
    fn write_deadline_at(&self, awaiting_pong: bool, ping: Duration, now: u64, mono: Instant) -> Instant {
        let close = mono + Duration::from_secs(self.close_at.saturating_sub(now));
        let pong = if awaiting_pong {
            self.ping_at
        } else {
            self.ping_at + ping
        };
        close.min(pong)
    }

    fn next_deadline(&self, now: u64, mono: Instant) -> Instant {
        let wall = if self.notice_sent {
            self.close_at
        } else {
            self.notice_at().min(self.close_at)
        };
        let wall = mono + Duration::from_secs(wall.saturating_sub(now));
        // Re-check at least every second: wall-clock deadlines are whole seconds.
        wall.min(self.ping_at).min(mono + Duration::from_secs(1)).max(mono)
    }
}

/// What a client message costs against the socket's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spend {
    Ok,
    /// Over budget: refuse it with `rate_limited`.
    Over,
    /// Over budget for a second's worth of messages in a row: close 1008.
    Close,
}

/// A socket's burst: this many seconds' worth of its command budget (an
/// agent subscribing to all of `--max-subscriptions` at once fits).
const BURST: u64 = 4;

/// A socket's command budget (`--max-commands-per-sec`): a token bucket
/// of `rate` a second holding up to [`BURST`] times that, in
/// milli-commands. Refused messages count as strikes until the bucket is
/// full again; `rate` strikes close the socket. Sans-IO: `now_ms` is passed.
struct Budget {
    milli: u64,
    last_ms: u64,
    rate: u32,
    strikes: u32,
}

impl Budget {
    fn new(rate: u32, now_ms: u64) -> Budget {
        let rate = rate.max(1);
        Budget {
            rate,
            milli: u64::from(rate) * BURST * 1000,
            last_ms: now_ms,
            strikes: 0,
        }
    }

    fn take(&mut self, now_ms: u64) -> Spend {
        let rate = u64::from(self.rate);
        let cap = rate * BURST * 1000;
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.milli = self.milli.saturating_add(elapsed.saturating_mul(rate)).min(cap);
        if self.milli >= cap {
            self.strikes = 0;
        }
        if self.milli >= 1000 {
            self.milli -= 1000;
            return Spend::Ok;
        }
        self.strikes = self.strikes.saturating_add(1);
        if self.strikes >= self.rate {
            Spend::Close
        } else {
            Spend::Over
        }
    }
}

/// What a socket's event asks of it ([`take_event`]).
enum Step {
    /// Nothing from the client: the hub's wake-up or an alarm.
    Wake,
    /// Close with this code.
    Close((u16, &'static str)),
    /// Replies to write (none for a ping or a pong).
    Replies(Vec<String>),
    /// A command that has to wait first ([`waited`]).
    Wait(Waiting),
}

/// A command that has to wait before it runs: a publish the hub accepts
/// waits for room in its readers' queues (`paced`, SPEC §4.3 fairness), and
/// in cluster mode any command may wait for Redis. Boxed: the parse is kept
/// across that wait, and only a waiting message pays for it (two
/// allocations, the parse and the wait's future, per paced publish).
struct Waiting {
    parsed: Box<Result<protocol::ClientMessage, protocol::BadMessage>>,
    paced: bool,
}

/// Takes one event without waiting: for a client message, counts it,
/// charges the socket's command budget, parses it and runs a command that
/// needs no wait. Publishes are not charged: they are paced by their
/// readers instead (SPEC §4.3) and bounded by the history and
/// `--max-channels`.
#[allow(clippy::too_many_arguments)]
fn take_event(
    ev: Ev,
    shared: &Shared,
    handle: &ConnHandle,
    id: ConnId,
    rights: &mut Rights,
    timers: &mut Timers,
    budget: &mut Budget,
    msgs_in: &mut u64,
) -> Step {
    let msg = match ev {
        Ev::Wake => return Step::Wake,
        Ev::In(None) => return Step::Close((1006, "closed")),
        Ev::In(Some(Err(WsError::Capacity(_)))) => return Step::Close((1009, "message too big")),
        Ev::In(Some(Err(_))) => return Step::Close((1006, "read failed")),
        Ev::In(Some(Ok(msg))) => msg,
    };
    let parsed = match &msg {
        Message::Text(t) => Some(protocol::parse_client(t.as_str())),
        _ => None,
    };
    let publishing = matches!(&parsed, Some(Ok(m)) if matches!(m.command, Command::Publish { .. }));
    let charged = !publishing && matches!(msg, Message::Text(_) | Message::Binary(_) | Message::Ping(_));
    let verdict = if charged { budget.take(mono_ms()) } else { Spend::Ok };
    let mut count_in = || {
        *msgs_in += 1;
        handle.messages_in.set(*msgs_in);
        add(&shared.metrics.messages_in, 1);
    };
    match msg {
        _ if verdict == Spend::Close => Step::Close((1008, "rate limited")),
        Message::Text(_) | Message::Binary(_) if verdict == Spend::Over => {
            count_in();
            let reference = match &parsed {
                Some(Ok(m)) => m.reference.as_deref(),
                Some(Err(bad)) => bad.reference.as_deref(),
                None => None,
            };
            Step::Replies(vec![protocol::error(
                "rate_limited",
                "too many messages on this socket; slow down",
                reference,
            )])
        }
        Message::Text(_) => {
            count_in();
            let Some(parsed) = parsed else {
                return Step::Replies(Vec::new());
            };
            let paced = matches!(&parsed, Ok(m) if matches!(&m.command, Command::Publish { channel, .. }
                if crate::hub::may_publish(rights, channel, shared.hub.borrow().levels()).is_ok()));
            if paced || !shared.engine.is_local() {
                Step::Wait(Waiting {
                    parsed: Box::new(parsed),
                    paced,
                })
            } else {
                Step::Replies(command(shared, handle, id, rights, timers, parsed))
            }
        }
        Message::Binary(_) => {
            count_in();
            Step::Replies(vec![protocol::error(
                "bad_message",
                "binary frames are not accepted; send JSON text",
                None,
            )])
        }
        Message::Close(_) => Step::Close((1000, "client closed")),
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Step::Replies(Vec::new()),
    }
}

/// Runs a command that has to wait ([`Waiting`]): a paced publish first
/// waits for room in its readers' queues, and in cluster mode the broker
/// handles it (or lets the hub). Returns how the wait's writes ended and
/// the command's replies (none unless they all finished).
#[allow(clippy::too_many_arguments)]
async fn waited<S>(
    shared: &Rc<Shared>,
    handle: &ConnHandle,
    ws: &mut Ws<S>,
    id: ConnId,
    rights: &mut Rights,
    timers: &mut Timers,
    sent: &mut u64,
    deadline: Instant,
    w: Waiting,
) -> (Wrote, Vec<String>)
where
    S: AsyncRead + AsyncWrite + Readiness + Unpin,
{
    let Waiting { parsed, paced } = w;
    if paced
        && let Ok(m) = &*parsed
        && let Command::Publish { channel, .. } = &m.command
    {
        let wrote = room_for_socket(shared, handle, ws, id, channel, sent, deadline).await;
        if wrote != Wrote::Done {
            return (wrote, Vec::new());
        }
    }
    let replies = if shared.engine.is_local() {
        command(shared, handle, id, rights, timers, *parsed)
    } else {
        match broker_command(shared, rights, &parsed).await {
            Some(r) => r,
            None => command(shared, handle, id, rights, timers, *parsed),
        }
    };
    (Wrote::Done, replies)
}

/// Cluster mode (SPEC §12): a publish goes through the broker (its replies
/// are returned), and a subscribe first waits until this node's copy of the
/// channel is the cluster's (`None`: the hub handles it as usual; error
/// `broker_unavailable` when Redis is away).
async fn broker_command(
    shared: &Rc<Shared>,
    rights: &Rights,
    parsed: &Result<protocol::ClientMessage, protocol::BadMessage>,
) -> Option<Vec<String>> {
    let Ok(msg) = parsed else { return None };
    let r = msg.reference.as_deref();
    let unavailable = |f: crate::broker::StoreFailure| {
        let (code, message) = f.code();
        vec![protocol::error(code, message, r)]
    };
    match &msg.command {
        Command::Subscribe { channel, .. } => match crate::broker::ready_to_subscribe(shared, rights, channel).await {
            Ok(()) => None,
            Err(()) => Some(unavailable(crate::broker::StoreFailure::Broker)),
        },
        Command::Publish { channel, data } => Some(match crate::broker::publish(shared, rights, channel, data).await {
            Ok(p) => vec![
                Reply {
                    kind: "published",
                    channel: Some(channel),
                    id: Some(p.id),
                    epoch: Some(&p.epoch),
                    reference: r,
                    ..Reply::default()
                }
                .to_json(),
            ],
            Err(PublishError::Denied(d)) => vec![protocol::error(d.as_str(), d.message(), r)],
            Err(PublishError::Store(f)) => unavailable(f),
        }),
        _ => None,
    }
}

/// Handles one client command; returns the replies to send.
fn command(
    shared: &Shared,
    handle: &ConnHandle,
    id: ConnId,
    rights: &mut Rights,
    timers: &mut Timers,
    parsed: Result<protocol::ClientMessage, protocol::BadMessage>,
) -> Vec<String> {
    let msg = match parsed {
        Ok(m) => m,
        Err(bad) => return vec![protocol::error("bad_message", bad.message, bad.reference.as_deref())],
    };
    let r = msg.reference.as_deref();
    let deny = |d: crate::hub::Denied| protocol::error(d.as_str(), d.message(), r);
    match msg.command {
        Command::Presence(channel) => match shared.hub.borrow().presence(id, &channel) {
            Ok(subs) => vec![protocol::presence(&channel, &subs, r)],
            Err(d) => vec![deny(d)],
        },
        Command::Ping => vec![
            Reply {
                kind: "pong",
                reference: r,
                ..Reply::default()
            }
            .to_json(),
        ],
        // The reply and the replay are queued by the hub, in one step with
        // the subscription.
        Command::Subscribe { channel, since } => {
            match shared
                .hub
                .borrow_mut()
                .subscribe_since(id, &channel, since.as_ref(), r, now_millis())
            {
                Ok(_) => Vec::new(),
                Err(d) => vec![deny(d)],
            }
        }
        Command::Unsubscribe(ch) => match shared.hub.borrow_mut().unsubscribe(id, &ch) {
            Ok(()) => vec![
                Reply {
                    kind: "unsubscribed",
                    channel: Some(&ch),
                    reference: r,
                    ..Reply::default()
                }
                .to_json(),
            ],
            Err(d) => vec![deny(d)],
        },
        Command::Publish { channel, data } => match publish(shared, rights, &channel, &data) {
            Ok(p) => vec![
                Reply {
                    kind: "published",
                    channel: Some(&channel),
                    id: Some(p.id),
                    epoch: Some(&p.epoch),
                    reference: r,
                    ..Reply::default()
                }
                .to_json(),
            ],
            Err(PublishError::Denied(d)) => vec![deny(d)],
            Err(PublishError::Store(_)) => vec![protocol::error(
                "history_unavailable",
                "the message could not be stored; it was not published",
                r,
            )],
        },
        Command::Refresh(token) => {
            let now = now_unix();
            let verified = jwt::verify(&token, &shared.keys(), &shared.cfg.gate.verify, now).and_then(|c| {
                if c.sid.as_deref().is_some_and(|s| shared.is_revoked(s)) {
                    Err(Reject::TokenRevoked)
                } else {
                    Ok(c)
                }
            });
            let c = match verified {
                Ok(c) => c,
                Err(e) => return vec![protocol::error(e.as_str(), e.message(), r)],
            };
            if c.sub != rights.sub {
                return vec![protocol::error(
                    "invalid_claims",
                    "the new token is for another agent",
                    r,
                )];
            }
            if c.clearance < shared.cfg.gate.min_clearance {
                let rej = Rejection::InsufficientClearance;
                return vec![protocol::error(rej.code(), "the new token's clearance is too low", r)];
            }
            if shared.cfg.gate.needs_mfa(c.clearance) && !c.has_amr("otp") {
                let rej = Rejection::MfaRequired;
                return vec![protocol::error(
                    rej.code(),
                    "the new token's login had no one-time code",
                    r,
                )];
            }
            let new_rights = Rights::from_claims(&c);
            let operator = super::admin::is_operator(&shared.cfg, &c);
            shared.hub.borrow_mut().set_operator(id, operator);
            let dropped = shared.hub.borrow_mut().update_rights(id, new_rights.clone());
            *rights = new_rights;
            timers.reset(&c, shared.cfg.gate.verify.leeway);
            *handle.sid.borrow_mut() = c.sid.clone();
            let mut out: Vec<String> = dropped
                .iter()
                .map(|ch| {
                    Reply {
                        kind: "unsubscribed",
                        channel: Some(ch),
                        reason: Some("forbidden"),
                        ..Reply::default()
                    }
                    .to_json()
                })
                .collect();
            out.push(
                Reply {
                    kind: "refreshed",
                    expires_at: Some(timers.exp_secs),
                    reference: r,
                    ..Reply::default()
                }
                .to_json(),
            );
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most 3 bytes per write, and says `Pending` every other call.
    #[derive(Default)]
    struct Chunky {
        got: Vec<u8>,
        calls: usize,
    }

    impl AsyncWrite for Chunky {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<std::io::Result<usize>> {
            self.calls += 1;
            if self.calls % 2 == 0 {
                return Poll::Pending;
            }
            let n = b.len().min(3);
            self.got.extend_from_slice(&b[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Writes all of `b` the way tungstenite does (partial writes, retries).
    fn tung_write(o: &mut Outlet<Chunky>, mut b: &[u8]) {
        let mut cx = Context::from_waker(Waker::noop());
        while !b.is_empty() {
            if let Poll::Ready(r) = Pin::new(&mut *o).poll_write(&mut cx, b) {
                b = &b[r.unwrap()..];
            }
        }
    }

    fn flush_all(o: &mut Outlet<Chunky>) {
        let mut cx = Context::from_waker(Waker::noop());
        while Pin::new(&mut *o).poll_flush(&mut cx).is_pending() {}
    }

    /// (first header byte, payload) of each unmasked frame.
    fn frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let (len, at) = match b[1] {
                126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
                n => (n as usize, 2),
            };
            out.push((b[0], b[at..at + len].to_vec()));
            b = &b[at + len..];
        }
        out
    }

    #[test]
    fn alarms_wake_each_socket_once_at_its_latest_deadline() {
        let alarms = Alarms::default();
        let peer: SocketAddr = ([127, 0, 0, 1], 1).into();
        let a = Rc::new(ConnHandle::new(8, peer, 0));
        let b = Rc::new(ConnHandle::new(8, peer, 0));
        let base = mono_start() + Duration::from_millis(10_000);
        alarms.set(&a, base + Duration::from_millis(1));
        assert!(alarms.wake.set.get(), "an earlier deadline wakes the sweeper");
        // Moved later: the first entry is stale.
        alarms.set(&a, base + Duration::from_millis(500));
        alarms.set(&b, base + Duration::from_millis(120));
        // Rounded up to the grid: 10_050, 10_150, 10_500.
        assert_eq!(alarms.fire(10_000), Some(10_050));
        assert_eq!(alarms.fire(10_100), Some(10_150));
        assert!(!a.wake.set.get() && !b.wake.set.get(), "a stale deadline wakes nobody");
        assert_eq!(alarms.fire(10_150), Some(10_500));
        assert!(b.wake.set.get() && !a.wake.set.get());
        drop(a);
        assert_eq!(alarms.fire(20_000), None, "a socket gone is forgotten");

        // A sleep resolves once swept (or once its time has passed), and a
        // dropped one is forgotten.
        let soon = Instant::now() + Duration::from_secs(3600);
        let mut sleep = Box::pin(alarms.sleep_until(soon));
        let mut gone = Box::pin(alarms.sleep_until(soon));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        assert!(gone.as_mut().poll(&mut cx).is_pending());
        drop(gone);
        assert_eq!(alarms.heap.borrow().len(), 2);
        alarms.fire(u64::MAX - 1);
        assert!(sleep.as_mut().poll(&mut cx).is_ready());
        assert!(alarms.heap.borrow().is_empty());

        // Sleeps dropped long before their deadline do not pile up.
        for _ in 0..20_000 {
            let mut s = Box::pin(alarms.sleep_until(soon));
            assert!(s.as_mut().poll(&mut cx).is_pending());
        }
        assert!(
            alarms.heap.borrow().len() <= PURGE_SLACK + 1,
            "{}",
            alarms.heap.borrow().len()
        );
    }

    #[test]
    fn a_spike_of_sockets_that_ended_leaves_no_deadlines_behind() {
        // 5000 sockets with a deadline an hour away all end: their entries
        // (each holding its handle's allocation through a Weak) are purged
        // long before the hour, and the heap gives back its room.
        let alarms = Alarms::default();
        let peer: SocketAddr = ([127, 0, 0, 1], 1).into();
        let later = mono_start() + Duration::from_secs(3600);
        let keep = Rc::new(ConnHandle::new(8, peer, 0));
        alarms.set(&keep, later);
        let mut handles: Vec<Rc<ConnHandle>> = (0..5000).map(|_| Rc::new(ConnHandle::new(8, peer, 0))).collect();
        for h in &handles {
            alarms.set(h, later);
        }
        let peak = alarms.heap.borrow().capacity();
        assert!(peak >= 5001);
        for h in handles.drain(..) {
            drop(h);
            alarms.socket_ended();
        }
        let heap = alarms.heap.borrow();
        assert!(heap.len() < 64, "{} entries left", heap.len());
        assert!(heap.capacity() < peak / 4, "capacity {} of {peak}", heap.capacity());
        drop(heap);
        // The live socket's deadline is still there.
        assert_eq!(alarms.fire(u64::MAX - 1), None);
        assert!(keep.wake.set.get());
    }

    #[test]
    fn alarm_grid_rounds_up_never_down() {
        let at = |us: u64| grid_ms(mono_start() + Duration::from_micros(us));
        assert_eq!(at(1_000_000), 1000);
        assert_eq!(
            at(1_000_700),
            1050,
            "woken before the deadline, a socket would set none"
        );
        assert_eq!(at(1_000_001), 1050);
        assert_eq!(at(1_049_999), 1050);
    }

    #[test]
    fn framed_text_has_the_shortest_unmasked_header() {
        for n in [0usize, 125, 126, 65535, 65536] {
            let mut f = Framed::default();
            f.push_text(&vec![b'a'; n]);
            assert_eq!(frames(&f.buf), vec![(0x81, vec![b'a'; n])], "{n}");
        }
    }

    #[test]
    fn our_frames_and_tungstenites_never_interleave() {
        let pong = [0x8A, 0x03, b'p', b'o', b'n'];
        // Ours first, then tungstenite's pong: ours are written whole before it.
        let mut o = Outlet::new(Chunky::default(), b"HEAD".to_vec());
        o.out.push_text(b"hello there");
        o.out.push_text(&[b'x'; 300]);
        tung_write(&mut o, &pong);
        flush_all(&mut o);
        let got = &o.inner.got;
        assert_eq!(&got[..4], b"HEAD");
        let f = frames(&got[4..]);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0], (0x81, b"hello there".to_vec()));
        assert_eq!(f[1], (0x81, vec![b'x'; 300]));
        assert_eq!(f[2], (0x8A, b"pon".to_vec()));
        assert_eq!(o.out.pending(), 0);
        assert_eq!(o.out.buf.capacity(), 0, "an idle socket holds no write buffer");

        // tungstenite half-way through a frame: ours wait for its flush.
        let mut o = Outlet::new(Chunky::default(), Vec::new());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            Pin::new(&mut o).poll_write(&mut cx, &pong),
            Poll::Ready(Ok(3))
        ));
        o.out.push_text(b"late");
        tung_write(&mut o, &pong[3..]);
        assert_eq!(o.out.pending(), 6, "nothing of ours went out mid-frame");
        flush_all(&mut o);
        let f = frames(&o.inner.got);
        assert_eq!(f, vec![(0x8A, b"pon".to_vec()), (0x81, b"late".to_vec())]);
    }

    #[test]
    fn budget_allows_a_burst_then_refuses_then_closes() {
        let mut b = Budget::new(10, 1000);
        for _ in 0..40 {
            assert_eq!(b.take(1000), Spend::Ok);
        }
        for _ in 0..9 {
            assert_eq!(b.take(1000), Spend::Over);
        }
        assert_eq!(b.take(1000), Spend::Close);
    }

    #[test]
    fn budget_refills_at_its_rate_and_forgives_when_full() {
        let mut b = Budget::new(10, 0);
        for _ in 0..40 {
            assert_eq!(b.take(0), Spend::Ok);
        }
        assert_eq!(b.take(0), Spend::Over);
        // 100 ms at 10/s: one more.
        assert_eq!(b.take(100), Spend::Ok);
        assert_eq!(b.take(100), Spend::Over);
        // A steady 10/s client is never refused.
        let mut t = 100;
        for _ in 0..50 {
            t += 100;
            assert_eq!(b.take(t), Spend::Ok);
        }
        // Four quiet seconds refill the burst and clear the strikes.
        t += 4000;
        for _ in 0..40 {
            assert_eq!(b.take(t), Spend::Ok);
        }
        for _ in 0..9 {
            assert_eq!(b.take(t), Spend::Over);
        }
        // A clock that goes backwards refills nothing.
        assert_eq!(b.take(0), Spend::Close);
    }
}
