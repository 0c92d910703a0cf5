//! `cargo bench --bench logins [-- ITERATIONS...]`: `POST /auth/login`
//! answers per second against a real `tessera serve --users FILE`, for a
//! user hashed with each PBKDF2 iteration count given (default: 600000,
//! the `useradd` default, and 10000). The server runs pinned to CPU 0 and
//! this client to CPU 1 when `taskset` exists; `C` clients each send one
//! login at a time on a fresh connection for `SECS` seconds. Prints one
//! line per iteration count: logins/s, latency percentiles, and any answer
//! that was not 200 (503 `busy` counts separately).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;

const KEY: &str = "bench-key-0123456789abcdefghijklmnopqrstuvwxyz";
const PASSWORD: &str = "correct horse battery staple";
/// Concurrent clients: more than the server's hashing slots, fewer than its
/// queue, so every login is answered and the slots never sit idle.
const C: usize = 8;
const SECS: u64 = 10;

fn main() {
    let iterations: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect::<Vec<_>>();
    let iterations = if iterations.is_empty() {
        vec![600_000, 10_000]
    } else {
        iterations
    };
    let pin = support::can_pin();
    for n in iterations {
        let r = bench(n, pin);
        println!(
            "pbkdf2 i={n}: {:.1} logins/s ({} ok in {:.1} s, C={C}; p50 {:.0} ms, p99 {:.0} ms; busy {}, other {})",
            r.ok as f64 / r.secs,
            r.ok,
            r.secs,
            r.p50_ms,
            r.p99_ms,
            r.busy,
            r.other
        );
    }
}

struct Result {
    ok: usize,
    busy: usize,
    other: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn bench(iterations: u32, pin: bool) -> Result {
    let bin = env!("CARGO_BIN_EXE_tessera");
    let dir = std::env::temp_dir().join(format!("tessera-login-bench-{}-{iterations}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let users = dir.join("users");
    let mut add = Command::new(bin)
        .args(["useradd", "--users", users.to_str().unwrap(), "--name", "bench"])
        .args(["--iterations", &iterations.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    add.stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    assert!(add.wait().unwrap().success(), "useradd failed");

    let (mut child, addr) =
        support::start_server(&["--insecure-cookies", "--users", users.to_str().unwrap()], KEY, pin);

    // One login to warm up (and to check the credentials work).
    assert_eq!(login(addr), 200, "warm-up login failed");
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let counts = Arc::new(Mutex::new((0usize, 0usize)));
    let started = Instant::now();
    let threads: Vec<_> = (0..C)
        .map(|_| {
            let (stop, latencies, counts) = (stop.clone(), latencies.clone(), counts.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match login(addr) {
                        200 => latencies.lock().unwrap().push(t.elapsed()),
                        503 => counts.lock().unwrap().0 += 1,
                        _ => counts.lock().unwrap().1 += 1,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(SECS));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    if pin {
        // Back to both CPUs for the next server.
        support::pin_self("0,1");
    }
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let (busy, other) = *counts.lock().unwrap();
    Result {
        ok: l.len(),
        busy,
        other,
        secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

/// One `POST /auth/login` on a fresh connection; returns the status.
fn login(addr: SocketAddr) -> u16 {
    let body = format!(r#"{{"username":"bench","password":"{PASSWORD}"}}"#);
    let req = format!(
        "POST /auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let Ok(mut s) = TcpStream::connect(addr) else { return 0 };
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}
