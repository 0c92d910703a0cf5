//! Black-box tests of the per-socket and per-agent budgets (issue #14,
//! findings 2–4): `--max-subscriptions`, the command budget
//! (`--max-commands-per-sec`), sockets per `sub` and per address, writes
//! raced against the token's expiry and the pong deadline, and
//! `--max-channels` with idle channels pruned after `--history-ttl`.

mod common;

use async_tungstenite::tungstenite::Message;
use common::{Server, Ws, http, publish_as, status, token, ws_bearer, ws_connect};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Sends every command in `cmds` while reading replies, until `done` says
/// the replies seen are enough (or 60 s pass). Returns the replies.
async fn exchange(ws: Ws, cmds: Vec<Value>, done: impl Fn(&[Value]) -> bool) -> (Vec<Value>, Option<u16>) {
    let (mut tx, mut rx) = ws.split();
    let send = async move {
        for c in cmds {
            if tx.feed(Message::text(c.to_string())).await.is_err() {
                break;
            }
        }
        let _ = tx.flush().await;
        // Keep the sink alive until the reader is done.
        smol::Timer::after(Duration::from_secs(120)).await;
    };
    let read = async move {
        let mut got = Vec::new();
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let next = smol::future::or(async { Some(rx.next().await) }, async {
                smol::Timer::after(left).await;
                None
            })
            .await;
            match next {
                Some(Some(Ok(Message::Text(t)))) => {
                    got.push(serde_json::from_str::<Value>(t.as_str()).unwrap());
                    if done(&got) {
                        return (got, None);
                    }
                }
                Some(Some(Ok(Message::Close(f)))) => return (got, f.map(|f| u16::from(f.code))),
                Some(Some(Ok(_))) => {}
                _ => return (got, None),
            }
        }
    };
    smol::future::or(read, async {
        send.await;
        (Vec::new(), None)
    })
    .await
}

fn count(replies: &[Value], f: impl Fn(&Value) -> bool) -> usize {
    replies.iter().filter(|v| f(v)).count()
}

fn metric(addr: std::net::SocketAddr, name: &str) -> u64 {
    let m = http(addr, "GET", "/metrics", &[], "");
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in\n{m}"))
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn f2_forty_thousand_subscribes_are_capped_and_healthz_stays_responsive() {
    let s = Server::start(&["--max-commands-per-sec", "1000000", "--max-subscriptions", "256"]);
    let addr = s.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut answered = 0;
            while !stop.load(Ordering::Relaxed) {
                // `raw` gives up after 5 s: a hub held by one socket fails here.
                let r = http(addr, "GET", "/healthz", &[], "");
                assert_eq!(status(&r), 200, "healthz during the flood: {r:?}");
                answered += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            answered
        })
    };
    let n = 40_000;
    let (replies, _) = smol::block_on(async {
        let (ws, _) = ws_bearer(addr, &token("flood", 0, 600, |_| {})).await;
        let cmds = (0..n)
            .map(|i| json!({"type": "subscribe", "channel": format!("c{i}")}))
            .collect();
        exchange(ws, cmds, |got| got.len() >= n).await
    });
    stop.store(true, Ordering::Relaxed);
    let probes = probe.join().expect("healthz answered throughout");
    assert!(probes >= 1);
    assert_eq!(replies.len(), n);
    // The personal channel counts: 255 more.
    assert_eq!(count(&replies, |v| v["type"] == "subscribed"), 255);
    let refused = count(&replies, |v| v["code"] == "too_many_subscriptions");
    assert_eq!(refused, n - 255);
    // The socket is still open and can unsubscribe and subscribe again.
    smol::block_on(async {
        let (ws, _) = ws_bearer(addr, &token("flood2", 0, 600, |_| {})).await;
        let mut cmds: Vec<Value> = (0..300)
            .map(|i| json!({"type": "subscribe", "channel": format!("d{i}")}))
            .collect();
        cmds.push(json!({"type": "unsubscribe", "channel": "d0"}));
        cmds.push(json!({"type": "subscribe", "channel": "again", "ref": 7}));
        let (got, close) = exchange(ws, cmds, |got| got.len() >= 302).await;
        assert_eq!(close, None);
        let last = got.last().unwrap();
        assert_eq!(
            (&last["type"], &last["channel"]),
            (&json!("subscribed"), &json!("again")),
            "{last}"
        );
    });
    assert_eq!(metric(addr, "tessera_connections"), 0);
}

#[test]
fn f2_the_command_budget_answers_rate_limited_then_closes_1008() {
    let s = Server::start(&["--max-commands-per-sec", "20"]);
    let (got, close) = smol::block_on(async {
        let (ws, _) = ws_bearer(s.addr, &token("chatty", 0, 600, |_| {})).await;
        let cmds = (0..2000).map(|i| json!({"type": "ping", "ref": i})).collect();
        exchange(ws, cmds, |_| false).await
    });
    let pongs = count(&got, |v| v["type"] == "pong");
    let limited = count(&got, |v| v["code"] == "rate_limited");
    // Refused commands keep their ref: the first refused one follows the last pong.
    let first = got.iter().position(|v| v["code"] == "rate_limited").unwrap();
    assert_eq!(got[first]["ref"], json!(first), "{}", got[first]);
    // The burst (4 x 20) and what refills meanwhile get through.
    assert!((80..300).contains(&pongs), "{pongs} pongs");
    assert!((1..40).contains(&limited), "{limited} rate_limited");
    assert_eq!(close, Some(1008));
    s.wait_log(&["\"ws_close\"", "\"code\":1008", "rate limited"]);
    // A socket that keeps to the budget is never refused.
    smol::block_on(async {
        let (mut ws, _) = ws_bearer(s.addr, &token("calm", 0, 600, |_| {})).await;
        for i in 0..30 {
            common::send(&mut ws, json!({"type": "ping", "ref": i})).await;
            let r = common::recv(&mut ws).await;
            assert_eq!(r["type"], "pong", "{r}");
            smol::Timer::after(Duration::from_millis(60)).await;
        }
    });
}

/// A refused upgrade's status and `error` code.
async fn refused(addr: std::net::SocketAddr, tok: &str) -> (u16, String) {
    match ws_connect(addr, &[("Authorization", &format!("Bearer {tok}"))]).await {
        Ok(_) => (101, String::new()),
        Err(async_tungstenite::tungstenite::Error::Http(r)) => {
            let body = r
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            (r.status().as_u16(), v["error"].as_str().unwrap_or("").to_string())
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn f2_one_agent_cannot_take_every_connection_slot() {
    // The issue's example: --max-connections 5, one sub opening sockets.
    let s = Server::start(&["--max-connections", "5"]);
    smol::block_on(async {
        let a = token("a", 0, 600, |_| {});
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(ws_bearer(s.addr, &a).await.0);
        }
        assert_eq!(refused(s.addr, &a).await, (503, "too_many_sockets".to_string()));
        // Another agent still gets in.
        let (_b, w) = ws_bearer(s.addr, &token("b", 0, 600, |_| {})).await;
        assert_eq!(w["sub"], "b");
        // A closed socket gives its place back.
        let mut first = held.remove(0);
        first.close(None).await.unwrap();
        while first.next().await.is_some() {}
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if refused(s.addr, &a).await.0 == 101 {
                break;
            }
            assert!(Instant::now() < until, "the slot was not given back");
            smol::Timer::after(Duration::from_millis(50)).await;
        }
    });
    let s = Server::start(&["--max-sockets-per-sub", "2", "--max-sockets-per-address", "3"]);
    smol::block_on(async {
        let mut held = Vec::new();
        for sub in ["x", "x", "y"] {
            held.push(ws_bearer(s.addr, &token(sub, 0, 600, |_| {})).await.0);
        }
        // The address is at its cap (127.0.0.1): any sub is refused.
        assert_eq!(
            refused(s.addr, &token("z", 0, 600, |_| {})).await,
            (503, "too_many_sockets".to_string())
        );
        held.pop();
        smol::Timer::after(Duration::from_millis(300)).await;
        assert_eq!(
            refused(s.addr, &token("x", 0, 600, |_| {})).await,
            (503, "too_many_sockets".to_string())
        );
        assert_eq!(refused(s.addr, &token("z", 0, 600, |_| {})).await.0, 101);
    });
    assert!(s.logs().contains("too_many_sockets"));
}

/// A masked client frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Opens a raw WebSocket with a Bearer token that floods pings (125-byte
/// payloads, each answered by a pong) and never reads after the upgrade.
fn flood_pings(addr: std::net::SocketAddr, tok: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(&common::upgrade("/ws", &format!("Authorization: Bearer {tok}\r\n")))
        .unwrap();
    // Read the 101 head only.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"));
    c.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let ping = frame(0x9, &[b'p'; 125]).repeat(64);
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = c.write_all(&ping)
                && e.kind() != std::io::ErrorKind::WouldBlock
                && e.kind() != std::io::ErrorKind::TimedOut
            {
                return;
            }
        }
    })
}

#[test]
fn f3_a_socket_that_never_reads_does_not_outlive_its_token() {
    let s = Server::start(&[
        "--leeway",
        "0",
        "--ping-interval",
        "2",
        "--max-commands-per-sec",
        "1000000",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let t = flood_pings(s.addr, &token("flooder", 0, 4, |_| {}), stop.clone());
    let line = s.wait_log(&["\"ws_close\"", "\"flooder\""]);
    let took = started.elapsed();
    eprintln!("closed after {took:?}: {line}");
    stop.store(true, Ordering::Relaxed);
    let _ = t.join();
    assert!(
        line.contains("\"code\":4001") || line.contains("no pong"),
        "closed for expiry or a missed pong: {line}"
    );
    // wait_log gives up after 10 s; the token lasted 4 s and pings every 2 s.
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(metric(s.addr, "tessera_connections"), 0);
}

/// Publishes to `ch0` … `ch{n-1}` over one socket; the replies.
fn publish_many(addr: std::net::SocketAddr, tok: &str, n: usize) -> Vec<Value> {
    smol::block_on(async {
        let (ws, _) = ws_bearer(addr, tok).await;
        let cmds = (0..n)
            .map(|i| json!({"type": "publish", "channel": format!("ch{i}"), "data": i}))
            .collect();
        exchange(ws, cmds, |got| got.len() >= n).await.0
    })
}

#[test]
fn f4_the_channel_limit_refuses_new_channels_beyond_it() {
    let n = 20_000;
    let max = n.to_string();
    let s = Server::start(&["--max-channels", &max, "--max-commands-per-sec", "1000000"]);
    let hq = token("hq", 0, 600, |c| c.publish = true);
    let got = publish_many(s.addr, &hq, n);
    // The publisher's own @hq is one channel: n - 1 more fit.
    assert_eq!(count(&got, |v| v["type"] == "published"), n - 1);
    let last = got.last().unwrap();
    assert_eq!(last["code"], "too_many_channels", "{last}");
    // Its socket closed: `@hq`, which never had a message, goes with it,
    // and one more channel fits.
    let until = Instant::now() + Duration::from_secs(10);
    while metric(s.addr, "tessera_channels") as usize != n - 1 {
        assert!(Instant::now() < until, "@hq not dropped");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        status(&publish_as(s.addr, &hq, r#"{"channel":"one.more","data":1}"#)),
        202
    );
    let r = publish_as(s.addr, &hq, r#"{"channel":"two.more","data":1}"#);
    assert_eq!(status(&r), 503, "{r}");
    assert!(r.contains("too_many_channels"), "{r}");
    // Existing channels still take messages and subscribers.
    assert_eq!(status(&publish_as(s.addr, &hq, r#"{"channel":"ch1","data":1}"#)), 202);
    assert_eq!(metric(s.addr, "tessera_channels") as usize, n);
    smol::block_on(async {
        let (mut ws, _) = ws_bearer(s.addr, &hq).await;
        common::send(&mut ws, json!({"type": "subscribe", "channel": "ch5"})).await;
        assert_eq!(common::recv(&mut ws).await["type"], "subscribed");
        common::send(&mut ws, json!({"type": "subscribe", "channel": "new.one"})).await;
        assert_eq!(common::recv(&mut ws).await["code"], "too_many_channels");
    });
}

#[test]
fn f4_idle_channels_are_dropped_once_their_history_expired() {
    let n = 20_000;
    let s = Server::start(&["--history-ttl", "1", "--max-commands-per-sec", "1000000"]);
    let pid = s.child.id();
    let rss_before = rss_kib(pid);
    let hq = token("hq", 0, 600, |c| c.publish = true);
    let got = publish_many(s.addr, &hq, n);
    assert_eq!(count(&got, |v| v["type"] == "published"), n);
    let first_epoch = got[0]["epoch"].as_str().unwrap().to_string();
    let peak = metric(s.addr, "tessera_channels");
    let rss_full = rss_kib(pid);
    // The publisher is gone; after the TTL nothing is retained and nobody
    // subscribes: the channels go.
    // --history-ttl 1 plus the 10 s grace.
    let until = Instant::now() + Duration::from_secs(40);
    while metric(s.addr, "tessera_channels") > 0 {
        assert!(Instant::now() < until, "channels not dropped");
        std::thread::sleep(Duration::from_millis(200));
    }
    let rss_after = rss_kib(pid);
    eprintln!("RSS KiB: start {rss_before}, {n} channels {rss_full} (gauge {peak}), after expiry {rss_after}");
    // A re-created channel has a new epoch and starts over.
    let r = publish_as(s.addr, &hq, r#"{"channel":"ch0","data":1}"#);
    assert_eq!(status(&r), 202, "{r}");
    let v = common::body(&r);
    assert_eq!(v["id"], 1);
    assert_ne!(v["epoch"].as_str().unwrap(), first_epoch);
    // A resume from before the drop is not recovered.
    smol::block_on(async {
        let (mut ws, _) = ws_bearer(s.addr, &token("r", 0, 600, |_| {})).await;
        common::send(
            &mut ws,
            json!({"type": "subscribe", "channel": "ch0", "since": {"epoch": first_epoch, "offset": 1}}),
        )
        .await;
        let r = common::recv(&mut ws).await;
        assert_eq!(
            (&r["type"], &r["recovered"]),
            (&json!("subscribed"), &json!(false)),
            "{r}"
        );
    });
    // A channel with a subscriber stays, also past the TTL, with its epoch.
    smol::block_on(async {
        let (mut ws, _) = ws_bearer(s.addr, &token("keeper", 0, 600, |_| {})).await;
        common::send(&mut ws, json!({"type": "subscribe", "channel": "kept"})).await;
        let r = common::recv(&mut ws).await;
        let epoch = r["epoch"].as_str().unwrap().to_string();
        smol::Timer::after(Duration::from_secs(13)).await;
        common::send(&mut ws, json!({"type": "subscribe", "channel": "kept"})).await;
        let again = common::recv(&mut ws).await;
        assert_eq!(again["epoch"].as_str().unwrap(), epoch);
    });
}
