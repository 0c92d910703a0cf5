//! SPEC §4.3 fairness and §10 history and resume, black-box: the real
//! server binary, real WebSocket clients, bursts far over `--queue-depth`.

mod common;

use common::*;
use futures_util::{StreamExt, future::join_all};
use serde_json::{Value, json};
use smol::block_on;
use std::time::Duration;

/// The next `n` messages' ids, checking they belong to `channel`.
async fn ids(ws: &mut Ws, channel: &str, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let m = recv(ws).await;
        assert_eq!(
            (m["type"].as_str(), m["channel"].as_str()),
            (Some("message"), Some(channel)),
            "{m}"
        );
        out.push(m["id"].as_u64().unwrap());
    }
    out
}

/// Nothing more arrives for a moment.
async fn quiet(ws: &mut Ws) {
    match next_event(ws, Duration::from_millis(300)).await {
        Event::Timeout => {}
        other => panic!("expected nothing, got {other:?}"),
    }
}

fn publish_http(s: &Server, channel: &str, data: Value) -> Value {
    let r = publish_as(s.addr, &hq(), &json!({"channel":channel,"data":data}).to_string());
    assert_eq!(status(&r), 202, "{r}");
    body(&r)
}

#[test]
fn spec4_3_websocket_burst_far_over_queue_depth_reaches_every_reader() {
    const N: u64 = 2000;
    let s = Server::start(&["--queue-depth", "16", "--history", "0"]);
    block_on(async {
        let mut subs = Vec::new();
        for i in 0..4 {
            let (mut ws, _) = ws_bearer(s.addr, &token(&format!("r{i}"), 0, 600, |_| {})).await;
            subscribe(&mut ws, "burst", None).await;
            subs.push(ws);
        }
        let (publisher, _) = ws_bearer(s.addr, &hq()).await;
        let (mut tx, mut rx) = publisher.split();
        let payload = "p".repeat(256);
        let send_all = async move {
            for n in 0..N {
                let m = json!({"type":"publish","channel":"burst","data":{"n":n,"p":&payload}});
                tx.send(async_tungstenite::tungstenite::Message::text(m.to_string()))
                    .await
                    .unwrap();
            }
            tx
        };
        let acks = async move {
            let mut got = 0;
            while got < N {
                match rx.next().await {
                    Some(Ok(async_tungstenite::tungstenite::Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        assert_eq!(v["type"], "published", "{v}");
                        got += 1;
                    }
                    Some(Ok(_)) => {}
                    other => panic!("publisher: {other:?}"),
                }
            }
        };
        let readers = join_all(subs.iter_mut().map(|ws| async move {
            let got = ids(ws, "burst", N as usize).await;
            assert_eq!(got, (1..=N).collect::<Vec<_>>());
        }));
        let (_tx, (), _) = futures_util::future::join3(send_all, acks, readers).await;
    });
    assert!(!s.logs().contains("\"code\":4008"), "{}", s.logs());
    let m = http(s.addr, "GET", "/metrics", &[], "");
    assert!(m.contains("tessera_slow_consumers_total 0"), "{m}");
}

/// `POST /publish` × `n` pipelined on one keep-alive connection (written
/// all at once by a writer thread while this one reads the answers); the
/// status of each answer.
fn pipelined_publishes(addr: std::net::SocketAddr, token: &str, channel: &str, n: u64) -> Vec<u16> {
    use std::io::{BufRead, BufReader, Read, Write};
    let stream = std::net::TcpStream::connect(addr).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut reqs = Vec::new();
    for i in 0..n {
        let body = json!({"channel":channel,"data":i}).to_string();
        reqs.extend_from_slice(
            format!(
                "POST /publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    let writer = std::thread::spawn(move || w.write_all(&reqs).unwrap());
    let mut r = BufReader::new(stream);
    let mut statuses = Vec::new();
    for _ in 0..n {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        statuses.push(line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0));
        let mut len = 0;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if h == "\r\n" || h.is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
    }
    writer.join().unwrap();
    statuses
}

#[test]
fn spec4_3_http_burst_from_many_connections_reaches_every_reader() {
    const THREADS: u64 = 4;
    const EACH: u64 = 500;
    let s = Server::start(&["--queue-depth", "16"]);
    block_on(async {
        let mut subs = Vec::new();
        for i in 0..3 {
            let (mut ws, _) = ws_bearer(s.addr, &token(&format!("r{i}"), 0, 600, |_| {})).await;
            subscribe(&mut ws, "burst", None).await;
            subs.push(ws);
        }
        let addr = s.addr;
        let publishers: Vec<_> = (0..THREADS)
            .map(|_| std::thread::spawn(move || pipelined_publishes(addr, &hq(), "burst", EACH)))
            .collect();
        let total = (THREADS * EACH) as usize;
        join_all(subs.iter_mut().map(|ws| async move {
            let got = ids(ws, "burst", total).await;
            assert_eq!(got, (1..=total as u64).collect::<Vec<_>>());
        }))
        .await;
        for p in publishers {
            assert!(p.join().unwrap().iter().all(|&c| c == 202));
        }
    });
    assert!(!s.logs().contains("\"code\":4008"), "{}", s.logs());
}

#[test]
fn spec4_3_stuck_reader_closed_4008_readers_get_everything() {
    const N: u64 = 400;
    let s = Server::start(&["--queue-depth", "16", "--history", "0"]);
    block_on(async {
        let (mut stuck, _) = ws_bearer(s.addr, &token("stuck", 0, 600, |_| {})).await;
        subscribe(&mut stuck, "big", None).await;
        let mut subs = Vec::new();
        for i in 0..3 {
            let (mut ws, _) = ws_bearer(s.addr, &token(&format!("r{i}"), 0, 600, |_| {})).await;
            subscribe(&mut ws, "big", None).await;
            subs.push(ws);
        }
        // 400 × 12 KB: far more than the stuck socket's kernel buffers hold.
        let (publisher, _) = ws_bearer(s.addr, &hq()).await;
        let (mut tx, mut rx) = publisher.split();
        let big = "x".repeat(12_000);
        let send_all = async move {
            for n in 0..N {
                let m = json!({"type":"publish","channel":"big","data":{"n":n,"p":&big}});
                tx.send(async_tungstenite::tungstenite::Message::text(m.to_string()))
                    .await
                    .unwrap();
            }
            tx
        };
        let acks = async move {
            let mut got = 0;
            while got < N {
                if let Some(Ok(async_tungstenite::tungstenite::Message::Text(_))) = rx.next().await {
                    got += 1;
                }
            }
        };
        let readers = join_all(subs.iter_mut().map(|ws| async move {
            assert_eq!(ids(ws, "big", N as usize).await, (1..=N).collect::<Vec<_>>());
        }));
        let (_tx, (), _) = futures_util::future::join3(send_all, acks, readers).await;
        s.wait_log(&["ws_close", "\"sub\":\"stuck\"", "\"code\":4008"]);
        drop(stuck);
    });
    // Only the stuck one.
    assert_eq!(s.logs().matches("\"code\":4008").count(), 1, "{}", s.logs());
}

#[test]
fn spec10_every_since_form() {
    let s = Server::start(&[]);
    let mut epoch = String::new();
    for n in 1..=5 {
        let b = publish_http(&s, "c", json!(n));
        assert_eq!(b["id"], n);
        epoch = b["epoch"].as_str().unwrap().to_string();
    }
    block_on(async {
        let (mut ws, _) = ws_bearer(s.addr, &token("a", 0, 600, |_| {})).await;
        // No since: the position, no replay, no `recovered`.
        let r = subscribe(&mut ws, "c", None).await;
        assert_eq!(r, json!({"type":"subscribed","channel":"c","epoch":&epoch,"offset":5}));
        quiet(&mut ws).await;
        // {last:N}
        let r = subscribe(&mut ws, "c", Some(json!({"last":2}))).await;
        assert_eq!((r["offset"].as_u64(), r["recovered"].as_bool()), (Some(5), Some(true)));
        assert_eq!(ids(&mut ws, "c", 2).await, [4, 5]);
        quiet(&mut ws).await;
        // {epoch, offset}
        let r = subscribe(&mut ws, "c", Some(json!({"epoch":&epoch,"offset":2}))).await;
        assert_eq!(r["recovered"], true);
        assert_eq!(ids(&mut ws, "c", 3).await, [3, 4, 5]);
        // Up to date: nothing, recovered.
        let r = subscribe(&mut ws, "c", Some(json!({"epoch":&epoch,"offset":5}))).await;
        assert_eq!(r["recovered"], true);
        quiet(&mut ws).await;
        // Another epoch: everything retained, not recovered.
        let r = subscribe(&mut ws, "c", Some(json!({"epoch":"someOtherEpoch","offset":3}))).await;
        assert_eq!(
            (r["epoch"].as_str(), r["recovered"].as_bool()),
            (Some(&*epoch), Some(false))
        );
        assert_eq!(ids(&mut ws, "c", 5).await, [1, 2, 3, 4, 5]);
        // Then live, once (the subscription was not duplicated).
        publish_http(&s, "c", json!(6));
        assert_eq!(ids(&mut ws, "c", 1).await, [6]);
        quiet(&mut ws).await;
        // Bad forms.
        for bad in [
            json!({"last":1001}),
            json!({"last":-1}),
            json!({"epoch":&epoch}),
            json!({"offset":1}),
            json!("x"),
        ] {
            send(&mut ws, json!({"type":"subscribe","channel":"c","since":bad,"ref":"r"})).await;
            let e = recv(&mut ws).await;
            assert_eq!(
                (e["code"].as_str(), e["ref"].as_str()),
                (Some("bad_message"), Some("r")),
                "{e}"
            );
        }
        let r = subscribe(&mut ws, "c", Some(json!({"last":1000}))).await;
        assert_eq!(r["recovered"], true);
        assert_eq!(ids(&mut ws, "c", 6).await, [1, 2, 3, 4, 5, 6]);
    });
    let m = http(s.addr, "GET", "/metrics", &[], "");
    assert!(m.contains("tessera_history_messages 6\n"), "{m}");
    assert!(m.contains("tessera_history_disk_bytes 0\n"), "{m}");
}

#[test]
fn spec10_retention_by_count_age_and_bytes() {
    // Count.
    let s = Server::start(&["--history", "3"]);
    let mut epoch = String::new();
    for n in 1..=5 {
        epoch = publish_http(&s, "c", json!(n))["epoch"].as_str().unwrap().into();
    }
    block_on(async {
        let (mut ws, _) = ws_bearer(s.addr, &token("a", 0, 600, |_| {})).await;
        let r = subscribe(&mut ws, "c", Some(json!({"epoch":&epoch,"offset":1}))).await;
        assert_eq!(r["recovered"], false);
        assert_eq!(ids(&mut ws, "c", 3).await, [3, 4, 5]);
        let r = subscribe(&mut ws, "c", Some(json!({"epoch":&epoch,"offset":2}))).await;
        assert_eq!(r["recovered"], true);
        assert_eq!(ids(&mut ws, "c", 3).await, [3, 4, 5]);
    });
    drop(s);
    // Age.
    let s = Server::start(&["--history-ttl", "1"]);
    publish_http(&s, "c", json!(1));
    publish_http(&s, "c", json!(2));
    std::thread::sleep(Duration::from_millis(2200));
    let epoch: String = publish_http(&s, "c", json!(3))["epoch"].as_str().unwrap().into();
    block_on(async {
        let (mut ws, _) = ws_bearer(s.addr, &token("a", 0, 600, |_| {})).await;
        let r = subscribe(&mut ws, "c", Some(json!({"epoch":&epoch,"offset":0}))).await;
        assert_eq!(r["recovered"], false);
        assert_eq!(ids(&mut ws, "c", 1).await, [3]);
        quiet(&mut ws).await;
    });
    drop(s);
    // Bytes, across channels, oldest first: each frame is about 380 bytes,
    // room for 4.
    let s = Server::start(&["--history-max-bytes", "1600"]);
    let pad = "z".repeat(300);
    let ea: String = publish_http(&s, "a", json!(pad))["epoch"].as_str().unwrap().into();
    for _ in 0..3 {
        publish_http(&s, "b", json!(pad));
    }
    block_on(async {
        let (mut ws, _) = ws_bearer(s.addr, &token("x", 0, 600, |_| {})).await;
        let r = subscribe(&mut ws, "a", Some(json!({"epoch":&ea,"offset":0}))).await;
        assert_eq!((r["offset"].as_u64(), r["recovered"].as_bool()), (Some(1), Some(true)));
        assert_eq!(ids(&mut ws, "a", 1).await, [1]);
        // One more message anywhere pushes out the oldest: a's.
        publish_http(&s, "b", json!(pad));
        let r = subscribe(&mut ws, "a", Some(json!({"epoch":&ea,"offset":0}))).await;
        assert_eq!(r["recovered"], false);
        quiet(&mut ws).await;
        let r = subscribe(&mut ws, "b", Some(json!({"last":10}))).await;
        assert_eq!(r["recovered"], true);
        assert_eq!(ids(&mut ws, "b", 4).await, [1, 2, 3, 4]);
        publish_http(&s, "b", json!(pad));
        assert_eq!(ids(&mut ws, "b", 1).await, [5]);
        let r = subscribe(&mut ws, "b", Some(json!({"last":10}))).await;
        assert_eq!(r["recovered"], false);
        assert_eq!(ids(&mut ws, "b", 4).await, [2, 3, 4, 5]);
    });
}

/// Resume while a publisher streams: replay then live, contiguous, no
/// duplicate at the boundary; and again after a reconnect.
#[test]
fn spec10_boundary_race_while_publisher_streams() {
    const N: u64 = 3000;
    let s = Server::start(&["--history", "5000"]);
    block_on(async {
        let (publisher, _) = ws_bearer(s.addr, &hq()).await;
        let (mut tx, mut rx) = publisher.split();
        // The reader raises this just before it subscribes; the publisher
        // holds a third of the way in until then, so the subscribe always
        // lands mid-stream however slow the machine (or an emulator) is.
        let reader_ready = std::rc::Rc::new(std::cell::Cell::new(false));
        let ready = reader_ready.clone();
        let send_all = async move {
            for n in 0..N {
                let m = json!({"type":"publish","channel":"race","data":n});
                tx.send(async_tungstenite::tungstenite::Message::text(m.to_string()))
                    .await
                    .unwrap();
                if n % 100 == 0 {
                    smol::Timer::after(Duration::from_millis(2)).await;
                }
                while n == N / 3 && !ready.get() {
                    smol::Timer::after(Duration::from_millis(1)).await;
                }
            }
            tx
        };
        let acks = async move {
            let mut got = 0;
            while got < N {
                if let Some(Ok(async_tungstenite::tungstenite::Message::Text(_))) = rx.next().await {
                    got += 1;
                }
            }
        };
        let reader = async {
            smol::Timer::after(Duration::from_millis(20)).await;
            let (mut ws, _) = ws_bearer(s.addr, &token("r", 0, 600, |_| {})).await;
            reader_ready.set(true);
            let r = subscribe(&mut ws, "race", Some(json!({"last":1000}))).await;
            assert_eq!(r["recovered"], true);
            let at = r["offset"].as_u64().unwrap();
            let epoch = r["epoch"].as_str().unwrap().to_string();
            let first = at.saturating_sub(1000) + 1;
            // Half way, drop and resume from the last id seen.
            let half = (N - first).div_ceil(2);
            let got = ids(&mut ws, "race", half as usize).await;
            assert_eq!(got, (first..first + half).collect::<Vec<_>>());
            drop(ws);
            let last = first + half - 1;
            let (mut ws, _) = ws_bearer(s.addr, &token("r", 0, 600, |_| {})).await;
            let r = subscribe(&mut ws, "race", Some(json!({"epoch":epoch,"offset":last}))).await;
            assert_eq!(r["recovered"], true);
            let got = ids(&mut ws, "race", (N - last) as usize).await;
            assert_eq!(got, (last + 1..=N).collect::<Vec<_>>());
            quiet(&mut ws).await;
            at
        };
        let (_tx, (), at) = futures_util::future::join3(send_all, acks, reader).await;
        assert!(at < N, "the resume did not happen mid-stream ({at})");
    });
}

#[test]
fn spec10_personal_channel_resume() {
    let s = Server::start(&[]);
    let p = token("p", 0, 600, |_| {});
    block_on(async {
        let (mut ws, _) = ws_bearer(s.addr, &p).await;
        let epoch: String = publish_http(&s, "@p", json!(1))["epoch"].as_str().unwrap().into();
        assert_eq!(ids(&mut ws, "@p", 1).await, [1]);
        drop(ws);
        publish_http(&s, "@p", json!(2));
        publish_http(&s, "@p", json!(3));
        let (mut ws, _) = ws_bearer(s.addr, &p).await;
        let r = subscribe(&mut ws, "@p", Some(json!({"epoch":&epoch,"offset":1}))).await;
        assert_eq!((r["offset"].as_u64(), r["recovered"].as_bool()), (Some(3), Some(true)));
        assert_eq!(ids(&mut ws, "@p", 2).await, [2, 3]);
        publish_http(&s, "@p", json!(4));
        assert_eq!(ids(&mut ws, "@p", 1).await, [4]);
        quiet(&mut ws).await;
        // Nobody else may resume it.
        let (mut other, _) = ws_bearer(s.addr, &token("q", 9, 600, |_| {})).await;
        send(
            &mut other,
            json!({"type":"subscribe","channel":"@p","since":{"last":10}}),
        )
        .await;
        assert_eq!(recv(&mut other).await["code"], "forbidden");
        quiet(&mut other).await;
    });
}

#[test]
fn spec10_forbidden_channel_never_replayed() {
    let s = Server::start(&["--channel", "secret=5"]);
    publish_http(&s, "secret", json!("classified"));
    publish_http(&s, "open", json!("hello"));
    block_on(async {
        let (mut ws, _) = ws_bearer(
            s.addr,
            &token("low", 1, 600, |c| c.channels = Some(vec!["secret".into(), "o*".into()])),
        )
        .await;
        send(
            &mut ws,
            json!({"type":"subscribe","channel":"secret","since":{"last":10}}),
        )
        .await;
        assert_eq!(recv(&mut ws).await["code"], "forbidden");
        quiet(&mut ws).await;
        let (mut ws2, _) = ws_bearer(s.addr, &token("chan", 9, 600, |c| c.channels = Some(vec!["o*".into()]))).await;
        send(
            &mut ws2,
            json!({"type":"subscribe","channel":"secret","since":{"last":10}}),
        )
        .await;
        assert_eq!(recv(&mut ws2).await["code"], "forbidden");
        quiet(&mut ws2).await;
        let r = subscribe(&mut ws2, "open", Some(json!({"last":10}))).await;
        assert_eq!(r["recovered"], true);
        assert_eq!(ids(&mut ws2, "open", 1).await, [1]);
    });
}

#[test]
fn spec10_restart_without_history_dir_changes_the_epoch() {
    let s = Server::start(&[]);
    let e1: String = publish_http(&s, "c", json!(1))["epoch"].as_str().unwrap().into();
    let listen = s.addr.to_string();
    drop(s);
    let s = Server::launch().listen(&listen).start(&[]);
    let b = publish_http(&s, "c", json!(1));
    assert_eq!(b["id"], 1);
    assert_ne!(b["epoch"].as_str().unwrap(), e1);
    block_on(async {
        let (mut ws, _) = ws_bearer(s.addr, &token("a", 0, 600, |_| {})).await;
        let r = subscribe(&mut ws, "c", Some(json!({"epoch":&e1,"offset":1}))).await;
        assert_eq!(r["recovered"], false);
        assert_eq!(ids(&mut ws, "c", 1).await, [1]);
    });
}

/// Two WebSocket publishers that also read the channel they both flood:
/// each keeps taking its own messages while it waits for the other.
#[test]
fn spec4_3_publishers_that_subscribe_to_their_own_burst_are_not_closed() {
    const N: u64 = 1000;
    let s = Server::start(&["--queue-depth", "16", "--history", "0"]);
    block_on(async {
        let mut both = Vec::new();
        for name in ["p1", "p2"] {
            let (mut ws, _) = ws_bearer(s.addr, &token(name, 9, 600, |c| c.publish = true)).await;
            subscribe(&mut ws, "mesh", None).await;
            both.push(ws);
        }
        join_all(both.into_iter().map(|ws| async move {
            let (mut tx, mut rx) = ws.split();
            let send_all = async move {
                for n in 0..N {
                    let m = json!({"type":"publish","channel":"mesh","data":n});
                    tx.send(async_tungstenite::tungstenite::Message::text(m.to_string()))
                        .await
                        .unwrap();
                }
                tx
            };
            let read_all = async move {
                let (mut acks, mut msgs) = (0, 0);
                while acks < N || msgs < 2 * N {
                    match rx.next().await {
                        Some(Ok(async_tungstenite::tungstenite::Message::Text(t))) => {
                            let v: Value = serde_json::from_str(t.as_str()).unwrap();
                            match v["type"].as_str() {
                                Some("published") => acks += 1,
                                Some("message") => msgs += 1,
                                _ => panic!("{v}"),
                            }
                        }
                        Some(Ok(_)) => {}
                        other => panic!("publisher closed: {other:?}"),
                    }
                }
            };
            futures_util::future::join(send_all, read_all).await;
        }))
        .await;
    });
    assert!(!s.logs().contains("\"code\":4008"), "{}", s.logs());
}

/// The `.log` segment files in `dir`.
fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// Resumes `channel` from offset 0 of `epoch` and returns `subscribed` and
/// the ids replayed (`n` of them).
fn resume_all(s: &Server, channel: &str, epoch: &str, n: usize) -> (Value, Vec<u64>) {
    block_on(async {
        let (mut ws, _) = ws_bearer(s.addr, &token("reader", 0, 600, |_| {})).await;
        let r = subscribe(&mut ws, channel, Some(json!({"epoch":epoch,"offset":0}))).await;
        let got = ids(&mut ws, channel, n).await;
        quiet(&mut ws).await;
        (r, got)
    })
}

#[test]
fn spec10_history_dir_survives_sigterm_with_the_same_epoch() {
    let scratch = scratch_dir("history", "term");
    let dir = scratch.join("history"); // created by the server
    let d = dir.to_str().unwrap();
    let mut s = Server::start(&["--history-dir", d]);
    let mut epoch = String::new();
    for n in 1..=20 {
        epoch = publish_http(&s, "ops", json!(n))["epoch"].as_str().unwrap().into();
    }
    // And one over WebSocket.
    block_on(async {
        let (mut p, _) = ws_bearer(s.addr, &hq()).await;
        send(&mut p, json!({"type":"publish","channel":"ops","data":21})).await;
        let a = recv(&mut p).await;
        assert_eq!((a["id"].as_u64(), a["epoch"].as_str()), (Some(21), Some(&*epoch)));
    });
    s.signal("TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(5)), Some(0));
    let s = Server::start(&["--history-dir", d]);
    s.wait_log(&["history_loaded", "\"records\":21"]);
    let (r, got) = resume_all(&s, "ops", &epoch, 21);
    assert_eq!(
        (r["epoch"].as_str(), r["offset"].as_u64(), r["recovered"].as_bool()),
        (Some(&*epoch), Some(21), Some(true))
    );
    assert_eq!(got, (1..=21).collect::<Vec<_>>());
    // Offsets go on from there, in the same epoch.
    let b = publish_http(&s, "ops", json!(22));
    assert_eq!((b["id"].as_u64(), b["epoch"].as_str()), (Some(22), Some(&*epoch)));
    drop(s);
}

#[test]
fn spec10_history_dir_sigkill_loses_no_acknowledged_message() {
    let scratch = scratch_dir("history", "kill");
    let dir = scratch.join("history"); // created by the server
    let d = dir.to_str().unwrap();
    let s = Server::start(&["--history-dir", d]);
    let mut epoch = String::new();
    for n in 1..=200 {
        epoch = publish_http(&s, "c", json!(n))["epoch"].as_str().unwrap().into();
    }
    s.signal("KILL");
    drop(s);
    let s = Server::start(&["--history-dir", d]);
    let (r, got) = resume_all(&s, "c", &epoch, 100);
    // --history 100: the last 100 are kept, the first 100 are gone.
    assert_eq!(
        (r["epoch"].as_str(), r["offset"].as_u64(), r["recovered"].as_bool()),
        (Some(&*epoch), Some(200), Some(false))
    );
    assert_eq!(got, (101..=200).collect::<Vec<_>>());
    drop(s);
}

#[test]
fn spec10_history_dir_torn_tail_is_cut_and_logged() {
    let scratch = scratch_dir("history", "torn");
    let dir = scratch.join("history"); // created by the server
    let d = dir.to_str().unwrap();
    let mut s = Server::start(&["--history-dir", d]);
    let mut epoch = String::new();
    for n in 1..=5 {
        epoch = publish_http(&s, "c", json!(n))["epoch"].as_str().unwrap().into();
    }
    s.signal("TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(5)), Some(0));
    // Garbage after the last record.
    let seg = segments(&dir).pop().expect("a segment file");
    let len = std::fs::metadata(&seg).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"\x17\x00\x00\x00garbage that is not a record").unwrap();
    }
    let mut s = Server::start(&["--history-dir", d]);
    let line = s.wait_log(&["history_tail_cut"]);
    assert!(line.contains(&format!("\"kept_bytes\":{len}")), "{line}");
    let (r, got) = resume_all(&s, "c", &epoch, 5);
    assert_eq!(r["recovered"], true);
    assert_eq!(got, [1, 2, 3, 4, 5]);
    s.signal("TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(5)), Some(0));
    // A record cut in the middle (a write torn by a crash).
    let seg = segments(&dir).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let s = Server::start(&["--history-dir", d]);
    s.wait_log(&["history_tail_cut"]);
    let (r, got) = resume_all(&s, "c", &epoch, 4);
    assert_eq!((r["epoch"].as_str(), r["offset"].as_u64()), (Some(&*epoch), Some(4)));
    assert_eq!(got, [1, 2, 3, 4]);
    drop(s);
}

#[test]
fn spec10_history_dir_space_is_bounded_by_the_same_limits() {
    let scratch = scratch_dir("history", "compact");
    let dir = scratch.join("history"); // created by the server
    let d = dir.to_str().unwrap();
    let mut s = Server::start(&["--history-dir", d, "--history", "10"]);
    let pad = "y".repeat(10_000);
    let mut epoch = String::new();
    for _ in 0..500 {
        epoch = publish_http(&s, "c", json!(pad))["epoch"].as_str().unwrap().into();
    }
    publish_http(&s, "quiet", json!(1));
    s.wait_log(&["history_compacted"]);
    let size: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(size < 4 << 20, "{size}");
    s.signal("TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(5)), Some(0));
    let s = Server::start(&["--history-dir", d, "--history", "10"]);
    let (r, got) = resume_all(&s, "c", &epoch, 10);
    assert_eq!(
        (r["offset"].as_u64(), r["recovered"].as_bool()),
        (Some(500), Some(false))
    );
    assert_eq!(got, (491..=500).collect::<Vec<_>>());
    drop(s);
}
