//! The server's reactor: what its event loop waits on (issue 16).
//!
//! smol's `LocalExecutor` runs the tasks; this waits for their sockets and
//! timers. async-io, smol's own reactor, registers a socket one-shot: one
//! `epoll_ctl` to arm it before each wait for readiness and one to remove it
//! before `close`; and each of its waits sets a timerfd and re-arms its
//! eventfd (five system calls for one `epoll_wait`). Here, on mio:
//! - a socket is registered once, edge-triggered, and `close` removes it;
//! - its readiness is kept in two flags, set by the event and cleared when
//!   an operation finds the socket not ready or takes less than offered;
//! - a wait is one `epoll_wait` (kqueue on the BSDs) whose timeout is the
//!   nearest timer, kept in a heap on this thread.
//!
//! Sockets and timers belong to the thread that made them and are served
//! only while it is inside [`block_on`]. A waker called from another thread
//! (`smol::unblock`, async-io's signals and the Redis client's socket, which
//! stay on async-io) interrupts the wait through a [`mio::Waker`].

use std::cell::{Cell, RefCell};
use std::collections::BinaryHeap;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant, SystemTime};

use smol::io::{AsyncRead, AsyncWrite};

/// A TCP connection on this thread's reactor.
pub type Tcp = Io<mio::net::TcpStream>;
/// A TCP listener on this thread's reactor.
pub type Listener = Io<mio::net::TcpListener>;

/// The token of the cross-thread waker; sockets use their slot index.
const WAKE: mio::Token = mio::Token(usize::MAX);
/// Events taken per wait.
const EVENTS: usize = 256;

thread_local! {
    static REACTOR: RefCell<Option<Rc<Reactor>>> = const { RefCell::new(None) };
    static TIMERS: RefCell<Timers> = RefCell::new(Timers::default());
}

struct Reactor {
    poll: RefCell<mio::Poll>,
    events: RefCell<mio::Events>,
    slots: RefCell<Slots>,
    notify: Arc<Notify>,
}

impl Reactor {
    /// This thread's reactor, made on first use.
    fn get() -> io::Result<Rc<Reactor>> {
        REACTOR.with(|r| {
            let mut r = r.borrow_mut();
            if let Some(r) = &*r {
                return Ok(r.clone());
            }
            let poll = mio::Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), WAKE)?;
            let made = Rc::new(Reactor {
                poll: RefCell::new(poll),
                events: RefCell::new(mio::Events::with_capacity(EVENTS)),
                slots: RefCell::default(),
                notify: Arc::new(Notify {
                    woken: AtomicBool::new(false),
                    sleeping: AtomicBool::new(false),
                    waker,
                }),
            });
            *r = Some(made.clone());
            Ok(made)
        })
    }

    /// Waits for I/O until the nearest timer (not at all if a task was
    /// woken meanwhile), marks the sockets that became ready, fires the
    /// timers due.
    fn turn(&self) -> io::Result<()> {
        let next = TIMERS.with(|t| t.borrow_mut().fire(Instant::now()));
        let notify = &self.notify;
        notify.sleeping.store(true, SeqCst);
        let timeout = if notify.woken.load(SeqCst) {
            Some(Duration::ZERO)
        } else {
            next.map(|at| at.saturating_duration_since(Instant::now()))
        };
        let mut events = self.events.borrow_mut();
        let r = self.poll.borrow_mut().poll(&mut events, timeout);
        notify.sleeping.store(false, SeqCst);
        // A new turn: the clock is read again when first asked.
        TURN_CLOCK.with(|c| {
            c.set(TurnClock {
                in_loop: true,
                ..TurnClock::default()
            })
        });
        match r {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => return Err(e),
            _ => {}
        }
        for ev in events.iter() {
            if ev.token() == WAKE {
                continue;
            }
            let Some(source) = self.slots.borrow().get(ev.token().0) else {
                continue;
            };
            let error = ev.is_error();
            if error || ev.is_read_closed() {
                source.read_closed.set(true);
            }
            if error || ev.is_write_closed() {
                source.write_closed.set(true);
            }
            if error || ev.is_readable() || ev.is_read_closed() {
                source.readable.set(true);
                source.readers.wake();
            }
            if error || ev.is_writable() || ev.is_write_closed() {
                source.writable.set(true);
                source.writers.wake();
            }
        }
        drop(events);
        TIMERS.with(|t| t.borrow_mut().fire(now()));
        Ok(())
    }
}

/// The clock as this turn of the loop first read it (see [`now`]).
#[derive(Clone, Copy, Default)]
struct TurnClock {
    /// Inside [`block_on`]: readings are kept for the turn.
    in_loop: bool,
    mono: Option<Instant>,
    wall: Option<SystemTime>,
}

thread_local! {
    static TURN_CLOCK: Cell<TurnClock> = const {
        Cell::new(TurnClock { in_loop: false, mono: None, wall: None })
    };
}

/// The time, read once per turn of this thread's loop: the tasks that run
/// after one wait all see the instant of its first reading, like nginx's
/// cached time (a handshake read the clock a dozen times, 1 % of the
/// server's CPU, issue 16). A turn ends when the loop waits again, so the
/// reading is at most one turn old (the executor yields every 200 tasks),
/// and never earlier than the deadline of a timer that fired: a loop that
/// reads it, waits for a [`Timer`] set from it and reads it again sees time
/// move. Timers keep their own exact readings. Outside [`block_on`]: the
/// clock.
pub fn now() -> Instant {
    turn_reading(|t| &mut t.mono, Instant::now)
}

/// The wall clock, read once per turn like [`now`] (log time stamps,
/// token expiry, history times).
pub fn wall_now() -> SystemTime {
    turn_reading(|t| &mut t.wall, SystemTime::now)
}

/// This turn's reading in `field`, taken with `read` if it has none yet
/// (and kept only inside [`block_on`]).
fn turn_reading<T: Copy>(field: impl Fn(&mut TurnClock) -> &mut Option<T>, read: impl FnOnce() -> T) -> T {
    TURN_CLOCK.with(|c| {
        let mut t = c.get();
        if let Some(v) = *field(&mut t) {
            return v;
        }
        let v = read();
        if t.in_loop {
            *field(&mut t) = Some(v);
            c.set(t);
        }
        v
    })
}

/// Moves this turn's clock forward to `real` (a reading just taken), so
/// that [`now`] is never earlier than the deadline of a timer that fired.
fn advance_clock(real: Instant) {
    TURN_CLOCK.with(|c| {
        let t = c.get();
        if t.in_loop && t.mono.is_some_and(|m| m < real) {
            c.set(TurnClock {
                in_loop: true,
                mono: Some(real),
                wall: None,
            });
        }
    });
}

/// Ends the turn clock when [`block_on`] returns (or unwinds).
struct InLoop;

impl Drop for InLoop {
    fn drop(&mut self) {
        TURN_CLOCK.with(|c| c.set(TurnClock::default()));
    }
}

/// Runs `fut` to completion on this thread's reactor: polls it whenever it
/// was woken, waits for I/O and timers when it was not. An error only if
/// the reactor cannot be made or waited on.
pub fn block_on<F: Future>(fut: F) -> io::Result<F::Output> {
    let reactor = Reactor::get()?;
    let waker = Waker::from(reactor.notify.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    TURN_CLOCK.with(|c| {
        c.set(TurnClock {
            in_loop: true,
            ..TurnClock::default()
        })
    });
    let _in_loop = InLoop;
    loop {
        reactor.notify.woken.store(false, SeqCst);
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Ok(v);
        }
        reactor.turn()?;
    }
}

/// [`block_on`]'s waker. Woken on this thread (the usual case: a task
/// woke another), it only marks the loop to go on; from another thread
/// while the loop waits, it also interrupts the wait (one eventfd write).
struct Notify {
    woken: AtomicBool,
    sleeping: AtomicBool,
    waker: mio::Waker,
}

impl Wake for Notify {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        // Sequentially consistent on both sides: either the loop sees
        // `woken` before it waits, or this sees `sleeping` and interrupts.
        if !self.woken.swap(true, SeqCst) && self.sleeping.load(SeqCst) {
            let _ = self.waker.wake();
        }
    }
}

/// The registered sockets by token; a freed slot is reused. A late event
/// for a freed or reused slot (none comes unless a descriptor was
/// duplicated) only marks a socket ready that is not, or closed that is
/// not: its next operation finds out and waits again, or a short read of
/// it costs one `recvfrom` more. After a spike of sockets the
/// free slots at the end are given back (the listener holds a low one).
#[derive(Default)]
struct Slots {
    sources: Vec<Option<Rc<Source>>>,
    free: Vec<usize>,
    used: usize,
}

impl Slots {
    fn get(&self, key: usize) -> Option<Rc<Source>> {
        self.sources.get(key).and_then(|s| s.clone())
    }
    fn insert(&mut self, source: Rc<Source>) -> usize {
        self.used += 1;
        while let Some(key) = self.free.pop() {
            if let Some(s) = self.sources.get_mut(key) {
                *s = Some(source);
                return key;
            }
        }
        self.sources.push(Some(source));
        self.sources.len() - 1
    }
    fn remove(&mut self, key: usize) {
        let Some(s) = self.sources.get_mut(key) else { return };
        if s.take().is_none() {
            return;
        }
        self.used -= 1;
        self.free.push(key);
        if self.sources.len() > 256 && self.used < self.sources.len() / 4 {
            while self.sources.last().is_some_and(Option::is_none) {
                self.sources.pop();
            }
            let len = self.sources.len();
            self.free.retain(|&k| k < len);
            self.sources.shrink_to(len * 2);
            self.free.shrink_to(self.free.len() * 2);
        }
    }
}

/// One socket's readiness: set by its events, cleared by an operation
/// that would block, or by a read or write that took less than it was
/// offered (the socket had no more then; what comes after is a new
/// event). Both start set: a new socket is tried first. Once the peer has
/// closed its side (or the socket is in error) no event may come again,
/// so a short read no longer clears `readable` (nor a short write
/// `writable`).
struct Source {
    readable: Cell<bool>,
    writable: Cell<bool>,
    read_closed: Cell<bool>,
    write_closed: Cell<bool>,
    /// The last read returned `Pending`: its reader holds nothing it read
    /// and has not handed on ([`Io::poll_readable`]).
    parked: Cell<bool>,
    readers: Wakers,
    writers: Wakers,
}

impl Source {
    fn new() -> Source {
        Source {
            readable: Cell::new(true),
            writable: Cell::new(true),
            read_closed: Cell::new(false),
            write_closed: Cell::new(false),
            parked: Cell::new(false),
            readers: Wakers::default(),
            writers: Wakers::default(),
        }
    }
}

/// The tasks waiting for one direction of a socket: nearly always one.
#[derive(Default)]
struct Wakers {
    one: RefCell<Option<Waker>>,
    more: RefCell<Vec<Waker>>,
}

impl Wakers {
    fn register(&self, w: &Waker) {
        let mut one = self.one.borrow_mut();
        match &*one {
            None => *one = Some(w.clone()),
            Some(o) if o.will_wake(w) => {}
            Some(_) => {
                let mut more = self.more.borrow_mut();
                if !more.iter().any(|m| m.will_wake(w)) {
                    more.push(w.clone());
                }
            }
        }
    }
    fn wake(&self) {
        let one = self.one.borrow_mut().take();
        if let Some(w) = one {
            w.wake();
        }
        let more = std::mem::take(&mut *self.more.borrow_mut());
        for w in more {
            w.wake();
        }
    }
}

/// An I/O object registered on this thread's reactor (edge-triggered, for
/// both directions) until it is dropped; dropping it closes it, which
/// removes the registration.
pub struct Io<T> {
    inner: T,
    source: Rc<Source>,
    key: usize,
}

impl<T: mio::event::Source> Io<T> {
    /// Registers `inner`, which must be non-blocking (mio's types are).
    pub fn new(mut inner: T) -> io::Result<Io<T>> {
        let reactor = Reactor::get()?;
        let source = Rc::new(Source::new());
        let key = reactor.slots.borrow_mut().insert(source.clone());
        let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
        let registered = reactor
            .poll
            .borrow()
            .registry()
            .register(&mut inner, mio::Token(key), interest);
        if let Err(e) = registered {
            reactor.slots.borrow_mut().remove(key);
            return Err(e);
        }
        Ok(Io { inner, source, key })
    }
}

impl<T> Io<T> {
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// `Pending`, with `cx`'s waker registered, only while the last read
    /// returned `Pending` and no event came since: then its reader (say,
    /// tungstenite) has nothing buffered and a read would find nothing.
    /// After a read that returned data its reader may still hold some (two
    /// frames in one segment), so it is `Ready` then, even if that read
    /// took all the socket had.
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.source.parked.get() || self.source.readable.get() {
            return Poll::Ready(Ok(()));
        }
        self.source.readers.register(cx.waker());
        Poll::Pending
    }

    /// Runs `op` while the socket is (or may be) ready for reading
    /// (`write` false) or writing; `Pending`, with `cx`'s waker registered,
    /// once it would block.
    fn poll_op<R>(
        &self,
        cx: &mut Context<'_>,
        write: bool,
        mut op: impl FnMut(&T) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        let (ready, wakers) = if write {
            (&self.source.writable, &self.source.writers)
        } else {
            (&self.source.readable, &self.source.readers)
        };
        loop {
            if !ready.get() {
                wakers.register(cx.waker());
                return Poll::Pending;
            }
            match op(&self.inner) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.set(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return Poll::Ready(r),
            }
        }
    }
}

impl<T> Drop for Io<T> {
    fn drop(&mut self) {
        // No deregistration: closing the descriptor (right after this)
        // removes it from epoll.
        let _ = REACTOR.try_with(|r| {
            if let Ok(r) = r.try_borrow()
                && let Some(r) = &*r
                && let Ok(mut slots) = r.slots.try_borrow_mut()
            {
                slots.remove(self.key);
            }
        });
    }
}

impl Listener {
    /// Binds a listener made by std (options already set) to the reactor.
    pub fn from_std(l: std::net::TcpListener) -> io::Result<Listener> {
        l.set_nonblocking(true)?;
        Io::new(mio::net::TcpListener::from_std(l))
    }

    /// The next connection: non-blocking and close-on-exec from the start
    /// (`accept4` on Linux), registered on the reactor.
    pub async fn accept(&self) -> io::Result<(Tcp, SocketAddr)> {
        let (s, peer) = std::future::poll_fn(|cx| self.poll_op(cx, false, |l| l.accept())).await?;
        Ok((Io::new(s)?, peer))
    }
}

/// A read that filled less than `buf` took all the socket had: the next
/// one waits for an event instead of finding that out with a `recvfrom`
/// (issue 16: one per connection).
impl AsyncRead for Tcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let len = buf.len();
        let r = self.poll_op(cx, false, |s| {
            let mut s = s;
            s.read(buf)
        });
        let source = &self.source;
        source.parked.set(r.is_pending());
        if let Poll::Ready(Ok(n)) = r
            && n > 0
            && n < len
            && !source.read_closed.get()
        {
            source.readable.set(false);
        }
        r
    }
}

/// A write that took less than `buf` filled the socket's buffer: the next
/// one waits for room.
impl AsyncWrite for Tcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let len = buf.len();
        let r = self.poll_op(cx, true, |s| {
            let mut s = s;
            s.write(buf)
        });
        let source = &self.source;
        if let Poll::Ready(Ok(n)) = r
            && n > 0
            && n < len
            && !source.write_closed.get()
        {
            source.writable.set(false);
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    /// Sends the FIN (the descriptor closes when this is dropped).
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.inner.shutdown(std::net::Shutdown::Write))
    }
}

/// This thread's timers: a heap of deadlines. An entry whose [`Timer`]
/// was dropped or set again stays until it comes up or the heap has
/// doubled since it was last cleaned.
#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Entry>,
    seq: u64,
    clean_len: usize,
}

struct Entry {
    at: Instant,
    seq: u64,
    slot: Weak<Slot>,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Entry) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Entry) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    /// Reversed: the heap's top is the earliest deadline.
    fn cmp(&self, o: &Entry) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

impl Timers {
    fn insert(&mut self, at: Instant, slot: &Rc<Slot>) {
        if self.heap.len() >= 64 && self.heap.len() >= 2 * self.clean_len {
            self.heap.retain(|e| e.slot.strong_count() > 0);
            self.clean_len = self.heap.len();
        }
        self.seq += 1;
        self.heap.push(Entry {
            at,
            seq: self.seq,
            slot: Rc::downgrade(slot),
        });
    }

    /// Wakes the timers due at `now`; the next live deadline.
    fn fire(&mut self, now: Instant) -> Option<Instant> {
        while let Some(top) = self.heap.peek() {
            match top.slot.upgrade() {
                None => {}
                Some(_) if top.at > now => return Some(top.at),
                Some(slot) => {
                    slot.fired.set(true);
                    if let Some(w) = slot.waker.take() {
                        w.wake();
                    }
                }
            }
            self.heap.pop();
            self.clean_len = self.clean_len.min(self.heap.len());
        }
        None
    }
}

struct Slot {
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// A timer on this thread's reactor; resolves to its deadline once, then
/// never again until [`Timer::set_at`] (as smol's `Timer`, without a call
/// into another thread's reactor).
pub struct Timer {
    at: Option<Instant>,
    slot: Option<Rc<Slot>>,
}

impl Timer {
    /// Never fires.
    pub fn never() -> Timer {
        Timer { at: None, slot: None }
    }
    pub fn at(at: Instant) -> Timer {
        Timer {
            at: Some(at),
            slot: None,
        }
    }
    pub fn after(d: Duration) -> Timer {
        match Instant::now().checked_add(d) {
            Some(at) => Timer::at(at),
            None => Timer::never(),
        }
    }
    /// Moves the deadline (the old one no longer fires).
    pub fn set_at(&mut self, at: Instant) {
        self.at = Some(at);
        self.slot = None;
    }
}

impl Future for Timer {
    type Output = Instant;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Instant> {
        let Some(at) = self.at else {
            return Poll::Pending;
        };
        if let Some(slot) = &self.slot {
            if slot.fired.get() {
                *self = Timer::never();
                return Poll::Ready(at);
            }
            let mut w = slot.waker.borrow_mut();
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        let real = Instant::now();
        if real >= at {
            // The turn's clock catches up: code that waited for `at` must
            // not read an earlier time and wait for it again (a loop that
            // never yields).
            advance_clock(real);
            *self = Timer::never();
            return Poll::Ready(at);
        }
        let slot = Rc::new(Slot {
            fired: Cell::new(false),
            waker: RefCell::new(Some(cx.waker().clone())),
        });
        TIMERS.with(|t| t.borrow_mut().insert(at, &slot));
        self.slot = Some(slot);
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smol::io::{AsyncReadExt, AsyncWriteExt};

    /// Polls `f` once.
    async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
    }

    #[test]
    fn the_clock_is_read_once_per_turn() {
        // Outside the loop: the clock itself.
        let a = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > a);
        let (first, same, later, wall_same) = block_on(async {
            let first = now();
            let wall = wall_now();
            std::thread::sleep(Duration::from_millis(2));
            // Same turn: the same readings.
            let same = now();
            let wall_same = wall_now() == wall;
            // A timer ends the turn: read again.
            Timer::after(Duration::from_millis(1)).await;
            (first, same, now(), wall_same)
        })
        .unwrap();
        assert_eq!(first, same);
        assert!(wall_same);
        assert!(later >= first + Duration::from_millis(3), "{:?}", later - first);
        // A timer already due when polled fires at once, in the same turn,
        // and the turn's clock catches up with it: a loop that waits for a
        // deadline set from `now` sees time move (the alarm sweeper spun
        // forever before, in a turn longer than its grain).
        let caught_up = block_on(async {
            let t0 = now();
            std::thread::sleep(Duration::from_millis(5));
            let at = t0 + Duration::from_millis(2);
            Timer::at(at).await;
            now() >= at
        })
        .unwrap();
        assert!(caught_up);
        // After the loop: the clock again.
        let b = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > b);
    }

    #[test]
    fn timers_fire_in_order_and_a_dropped_or_moved_one_does_not() {
        let fired = Rc::new(RefCell::new(Vec::new()));
        let ex = smol::LocalExecutor::new();
        let start = Instant::now();
        for (name, ms) in [("c", 30u64), ("a", 10), ("b", 20)] {
            let fired = fired.clone();
            ex.spawn(async move {
                Timer::after(Duration::from_millis(ms)).await;
                fired.borrow_mut().push(name);
            })
            .detach();
        }
        // Dropped before its deadline: never fires.
        let dropped = ex.spawn({
            let fired = fired.clone();
            async move {
                Timer::after(Duration::from_millis(15)).await;
                fired.borrow_mut().push("dropped");
            }
        });
        let moved = {
            let fired = fired.clone();
            async move {
                let mut t = Timer::after(Duration::from_millis(5));
                // Polled once (registered), then moved later.
                assert!(poll_once(&mut t).await.is_pending());
                t.set_at(Instant::now() + Duration::from_millis(40));
                (&mut t).await;
                fired.borrow_mut().push("moved");
            }
        };
        let moved = ex.spawn(moved);
        let main = ex.run(async {
            Timer::after(Duration::from_millis(2)).await;
            drop(dropped);
            moved.await;
        });
        block_on(main).expect("reactor");
        assert_eq!(*fired.borrow(), ["a", "b", "c", "moved"]);
        assert!(start.elapsed() >= Duration::from_millis(40));
        // Fired once: pending after that, as smol's timer, until set again.
        let r = block_on(async {
            let mut t = Timer::after(Duration::from_millis(1));
            (&mut t).await;
            let again = smol::future::or(async { Some((&mut t).await) }, async {
                Timer::after(Duration::from_millis(20)).await;
                None
            })
            .await;
            t.set_at(Instant::now());
            (again, poll_once(&mut t).await.is_ready())
        });
        assert_eq!(r.ok(), Some((None, true)));
        // Never: pending however long it is polled.
        let r = block_on(async {
            smol::future::or(async { Some(Timer::never().await) }, async {
                Timer::after(Duration::from_millis(5)).await;
                None
            })
            .await
        });
        assert_eq!(r.ok().flatten(), None);
    }

    #[test]
    fn slots_are_reused_and_given_back_after_a_spike() {
        let source = || Rc::new(Source::new());
        let mut slots = Slots::default();
        let first = slots.insert(source());
        let keys: Vec<usize> = (0..10_000).map(|_| slots.insert(source())).collect();
        for &k in keys.iter().skip(1) {
            slots.remove(k);
        }
        slots.remove(first);
        // One socket left (keys[0]): the rest of the table is gone.
        assert_eq!(slots.used, 1);
        assert!(slots.sources.len() <= 256, "{} slots kept", slots.sources.len());
        assert!(slots.get(keys[0]).is_some());
        // Freed keys are handed out again, never one in use.
        let again: Vec<usize> = (0..300).map(|_| slots.insert(source())).collect();
        assert!(!again.contains(&keys[0]));
        let mut sorted = again.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), again.len());
        // Removing twice, or a key never given, changes nothing.
        slots.remove(keys[0]);
        slots.remove(keys[0]);
        slots.remove(usize::MAX);
        assert_eq!(slots.used, 300);
    }

    #[test]
    fn the_timer_heap_is_cleaned_of_dropped_timers() {
        block_on(async {
            for _ in 0..10_000 {
                let mut t = Timer::after(Duration::from_secs(60));
                assert!(poll_once(&mut t).await.is_pending());
            }
        })
        .expect("reactor");
        let len = TIMERS.with(|t| t.borrow().heap.len());
        assert!(len < 200, "{len} entries left for 0 live timers");
    }

    #[test]
    fn a_socket_pair_talks_through_edge_triggered_readiness() {
        let r = block_on(async {
            let std_l = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = std_l.local_addr()?;
            let l = Listener::from_std(std_l)?;
            let ex = smol::LocalExecutor::new();
            let server = ex.spawn(async move {
                let (mut s, _) = l.accept().await?;
                let mut got = Vec::new();
                let mut buf = [0u8; 7];
                // Small reads: readiness must stay set while data is left.
                loop {
                    let n = s.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(buf.get(..n).unwrap_or_default());
                }
                s.write_all(&got).await?;
                s.close().await?;
                io::Result::Ok(got.len())
            });
            ex.run(async move {
                let c = mio::net::TcpStream::connect(addr)?;
                let mut c = Io::new(c)?;
                // Several writes before the server reads; large enough
                // to fill the socket buffers both ways.
                let payload: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
                let send = async {
                    c.write_all(&payload).await?;
                    c.close().await?;
                    io::Result::Ok(())
                };
                // The server echoes only after EOF; read it back while it
                // writes.
                send.await?;
                let mut back = Vec::new();
                let (n, read) = futures_util::future::join(server, c.read_to_end(&mut back)).await;
                let n = n?;
                read?;
                assert_eq!(n, payload.len());
                assert!(back == payload, "echo differs");
                io::Result::Ok(())
            })
            .await
        });
        match r {
            Ok(Ok(())) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_short_read_then_the_peers_close_is_seen() {
        // The peer's data and FIN may come in one event: a short read must
        // not wait for another event that never comes. A 10 s guard turns
        // a hang into a failure.
        let r = block_on(async {
            let std_l = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = std_l.local_addr()?;
            let l = Listener::from_std(std_l)?;
            let mut peer = std::net::TcpStream::connect(addr)?;
            peer.write_all(b"hello")?;
            peer.shutdown(std::net::Shutdown::Write)?;
            let (mut s, _) = l.accept().await?;
            // Let both arrive before the first read.
            Timer::after(Duration::from_millis(50)).await;
            let mut buf = [0u8; 64];
            let first = s.read(&mut buf).await?;
            let guard = async {
                Timer::after(Duration::from_secs(10)).await;
                Err(io::Error::other("no EOF within 10 s"))
            };
            let second = smol::future::or(s.read(&mut buf), guard).await?;
            // And after a short read with more to come, the rest arrives.
            let mut peer2 = std::net::TcpStream::connect(addr)?;
            let (mut s2, _) = l.accept().await?;
            peer2.write_all(b"ab")?;
            let n = s2.read(&mut buf).await?;
            peer2.write_all(b"cd")?;
            let guard = async {
                Timer::after(Duration::from_secs(10)).await;
                Err(io::Error::other("no data within 10 s"))
            };
            let m = smol::future::or(s2.read(&mut buf), guard).await?;
            io::Result::Ok((first, second, n, m))
        });
        match r {
            Ok(Ok((5, 0, 2, 2))) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_wake_from_another_thread_ends_the_wait() {
        let start = Instant::now();
        // No socket and no timer of this thread could end the wait but the
        // 10 s guard: only the other thread's wake can, well before it.
        let r = block_on(async {
            let t = smol::unblock(move || {
                std::thread::sleep(Duration::from_millis(30));
                7
            });
            let guard = async {
                Timer::after(Duration::from_secs(10)).await;
                0
            };
            smol::future::or(t, guard).await
        });
        assert_eq!(r.ok(), Some(7));
        assert!(
            start.elapsed() < Duration::from_secs(9),
            "woken by the guard, not the wake"
        );
    }
}
