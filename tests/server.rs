//! Black-box tests of `tessera serve` (SPEC §4, §4.2, §4.3, §5, §7) against
//! the real binary on an ephemeral port.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    smol::block_on(f)
}

#[test]
fn spec4_2_missing_token_is_401_with_bare_challenge() {
    let s = Server::start(&[]);
    let r = raw(s.addr, &upgrade("/ws", ""));
    assert_eq!(status(&r), 401, "{r}");
    assert_eq!(header(&r, "www-authenticate"), Some("Bearer realm=\"tessera\""));
    assert_eq!(body(&r)["error"], "missing_token");
    assert!(header(&r, "content-length").is_some());
    assert!(!r.contains("101 Switching"));
}

#[test]
fn spec4_2_invalid_tokens_get_401_with_reason_and_no_socket() {
    let s = Server::start(&["--issuer", "hq-1"]);
    let other_key = {
        let c = tessera::jwt::Claims {
            sub: "x".into(),
            exp: (now() + 60) as f64,
            ..Default::default()
        };
        let ks = tessera::keys::KeySet::single(b"another-key-another-key-another-key").unwrap();
        tessera::jwt::sign(&c, &ks, None).unwrap()
    };
    let cases = [
        ("garbage", "malformed_token".to_string()),
        (&*other_key, "bad_signature".to_string()),
        (
            &*token("a", 0, -120, |c| c.iss = Some("hq-1".into())),
            "token_expired".to_string(),
        ),
        (
            &*token("a", 0, 60, |c| c.iss = Some("elsewhere".into())),
            "wrong_issuer".to_string(),
        ),
    ];
    for (t, reason) in cases.iter() {
        let r = raw(s.addr, &upgrade("/ws", &format!("Authorization: Bearer {t}\r\n")));
        assert_eq!(status(&r), 401, "{r}");
        assert_eq!(body(&r)["error"], reason.as_str(), "{r}");
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"tessera\", error=\"invalid_token\"")
        );
    }
    // The good one opens.
    let good = token("a", 0, 60, |c| c.iss = Some("hq-1".into()));
    block_on(async {
        let (_ws, w) = ws_bearer(s.addr, &good).await;
        assert_eq!(w["sub"], "a");
    });
}

#[test]
fn spec4_2_query_token_only_when_allowed() {
    let t = token("q", 0, 60, |_| {});
    let off = Server::start(&[]);
    let r = raw(off.addr, &upgrade(&format!("/ws?access_token={t}"), ""));
    assert_eq!(body(&r)["error"], "missing_token", "{r}");
    let on = Server::start(&["--allow-query-token"]);
    let r = raw(on.addr, &upgrade(&format!("/ws?access_token={t}"), ""));
    assert_eq!(status(&r), 101, "{r}");
    // The query string (with its token) never reaches the log.
    on.wait_log(&["ws_accept"]);
    assert!(!on.logs().contains(&t));
}

#[test]
fn spec4_2_cookie_origin_rules() {
    let t = token("c", 0, 60, |_| {});
    let s = Server::start(&[]);
    let cookie = format!("Cookie: tessera_access={t}\r\n");
    let r = raw(s.addr, &upgrade("/ws", &cookie));
    assert_eq!(
        (status(&r), body(&r)["error"].as_str()),
        (403, Some("origin_not_allowed")),
        "{r}"
    );
    let r = raw(
        s.addr,
        &upgrade("/ws", &format!("{cookie}Origin: http://evil.example\r\n")),
    );
    assert_eq!(status(&r), 403, "{r}");
    // Same origin as Host (the request's Host is `localhost`).
    let r = raw(
        s.addr,
        &upgrade("/ws", &format!("{cookie}Origin: http://localhost\r\n")),
    );
    assert_eq!(status(&r), 101, "{r}");

    let listed = Server::start(&["--allowed-origin", "https://console.example"]);
    let r = raw(
        listed.addr,
        &upgrade("/ws", &format!("{cookie}Origin: https://console.example\r\n")),
    );
    assert_eq!(status(&r), 101, "{r}");
    let bearer = format!("Authorization: Bearer {t}\r\n");
    let r = raw(
        listed.addr,
        &upgrade("/ws", &format!("{bearer}Origin: http://localhost\r\n")),
    );
    assert_eq!(
        (status(&r), body(&r)["error"].as_str()),
        (403, Some("origin_not_allowed")),
        "{r}"
    );
}

#[test]
fn spec4_2_min_clearance_403() {
    let s = Server::start(&["--min-clearance", "2"]);
    let r = raw(
        s.addr,
        &upgrade(
            "/ws",
            &format!("Authorization: Bearer {}\r\n", token("low", 1, 60, |_| {})),
        ),
    );
    assert_eq!(
        (status(&r), body(&r)["error"].as_str()),
        (403, Some("insufficient_clearance")),
        "{r}"
    );
    let r = raw(
        s.addr,
        &upgrade(
            "/ws",
            &format!("Authorization: Bearer {}\r\n", token("ok", 2, 60, |_| {})),
        ),
    );
    assert_eq!(status(&r), 101);
}

#[test]
fn spec4_2_server_full_503() {
    let s = Server::start(&["--max-connections", "1"]);
    block_on(async {
        let (_ws, _) = ws_bearer(s.addr, &token("one", 0, 60, |_| {})).await;
        let r = raw(
            s.addr,
            &upgrade(
                "/ws",
                &format!("Authorization: Bearer {}\r\n", token("two", 0, 60, |_| {})),
            ),
        );
        assert_eq!(
            (status(&r), body(&r)["error"].as_str()),
            (503, Some("server_full")),
            "{r}"
        );
    });
}

#[test]
fn spec7_ten_failures_throttle_the_address_429() {
    let s = Server::start(&[]);
    for _ in 0..10 {
        let r = raw(s.addr, &upgrade("/ws", "Authorization: Bearer nope\r\n"));
        assert_eq!(status(&r), 401);
    }
    let good = token("g", 0, 60, |_| {});
    let r = raw(s.addr, &upgrade("/ws", &format!("Authorization: Bearer {good}\r\n")));
    assert_eq!(
        (status(&r), body(&r)["error"].as_str()),
        (429, Some("too_many_attempts")),
        "{r}"
    );
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    s.wait_log(&["ip_throttled", "127.0.0.1"]);
}

#[test]
fn spec4_3_welcome_subscribe_levels_channels_and_personal_privacy() {
    let s = Server::start(&["--channel", "ops=1", "--channel", "briefing=3"]);
    block_on(async {
        let t = token("agent-7", 2, 600, |c| {
            c.channels = Some(vec!["ops".into(), "team.*".into(), "briefing".into()])
        });
        let (mut ws, w) = ws_bearer(s.addr, &t).await;
        assert_eq!(w["clearance"], 2);
        assert!(w["expires_at"].as_u64().unwrap() > now());
        assert!(w["server"].as_str().unwrap().starts_with("tessera/"));
        send(&mut ws, json!({"type":"subscribe","channel":"ops","ref":1})).await;
        let sub = recv(&mut ws).await;
        let epoch = sub["epoch"].as_str().unwrap_or_default();
        assert!(
            (16..=32).contains(&epoch.len()) && epoch.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b)),
            "{sub}"
        );
        assert_eq!(
            sub,
            json!({"type":"subscribed","channel":"ops","epoch":epoch,"offset":0,"ref":1})
        );
        send(&mut ws, json!({"type":"subscribe","channel":"briefing","ref":"b"})).await;
        let e = recv(&mut ws).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str(), e["ref"].as_str()),
            (Some("error"), Some("forbidden"), Some("b"))
        );
        send(&mut ws, json!({"type":"subscribe","channel":"other"})).await;
        assert_eq!(recv(&mut ws).await["code"], "forbidden");
        send(&mut ws, json!({"type":"subscribe","channel":"team.red"})).await;
        assert_eq!(recv(&mut ws).await["type"], "subscribed");
        send(&mut ws, json!({"type":"subscribe","channel":"@someone-else"})).await;
        assert_eq!(recv(&mut ws).await["code"], "forbidden");
        send(&mut ws, json!({"type":"subscribe","channel":"bad name!"})).await;
        assert_eq!(recv(&mut ws).await["code"], "bad_channel");
        send(&mut ws, json!({"type":"ping","ref":[1]})).await;
        assert_eq!(recv(&mut ws).await, json!({"type":"pong","ref":[1]}));
        send(&mut ws, json!({"type":"dance"})).await;
        assert_eq!(recv(&mut ws).await["code"], "bad_message");
        ws.send(async_tungstenite::tungstenite::Message::binary(vec![1, 2]))
            .await
            .unwrap();
        assert_eq!(recv(&mut ws).await["code"], "bad_message");
        send(&mut ws, json!({"type":"unsubscribe","channel":"ops"})).await;
        assert_eq!(recv(&mut ws).await, json!({"type":"unsubscribed","channel":"ops"}));
    });
}

#[test]
fn spec4_3_fan_out_over_socket_and_http_and_personal_channel() {
    let s = Server::start(&["--channel", "ops=1"]);
    block_on(async {
        let (mut a, _) = ws_bearer(s.addr, &token("a", 1, 600, |_| {})).await;
        let (mut b, _) = ws_bearer(s.addr, &token("b", 1, 600, |_| {})).await;
        let (mut hq, _) = ws_bearer(s.addr, &token("hq", 5, 600, |c| c.publish = true)).await;
        for ws in [&mut a, &mut b] {
            send(ws, json!({"type":"subscribe","channel":"ops"})).await;
            recv(ws).await;
        }
        send(
            &mut hq,
            json!({"type":"publish","channel":"ops","data":{"n":1},"ref":9}),
        )
        .await;
        let published = recv(&mut hq).await;
        let epoch = published["epoch"].as_str().unwrap_or_default().to_string();
        assert_eq!(
            published,
            json!({"type":"published","channel":"ops","id":1,"epoch":epoch,"ref":9})
        );
        for ws in [&mut a, &mut b] {
            let m = recv(ws).await;
            assert_eq!(
                (m["type"].as_str(), m["channel"].as_str(), m["id"].as_u64()),
                (Some("message"), Some("ops"), Some(1))
            );
            assert_eq!((m["from"].as_str(), &m["data"]), (Some("hq"), &json!({"n":1})));
            assert!(m["ts"].as_u64().unwrap() > now() * 1000 - 10_000);
        }
        // A non-publisher may not publish.
        send(&mut a, json!({"type":"publish","channel":"ops","data":1})).await;
        assert_eq!(recv(&mut a).await["code"], "forbidden");
        // HTTP publish, Bearer.
        let pt = token("hq", 5, 600, |c| c.publish = true);
        let r = publish_as(s.addr, &pt, r#"{"channel":"ops","data":"two"}"#);
        assert_eq!(status(&r), 202, "{r}");
        assert_eq!(body(&r), json!({"id":2,"delivered":2,"epoch":epoch}));
        for ws in [&mut a, &mut b] {
            assert_eq!(recv(ws).await["data"], "two");
        }
        // Personal channel: only its owner receives.
        let r = publish_as(s.addr, &pt, r#"{"channel":"@b","data":"psst"}"#);
        assert_eq!(body(&r)["delivered"], 1, "{r}");
        assert_eq!(recv(&mut b).await["data"], "psst");
        assert!(matches!(
            next_event(&mut a, Duration::from_millis(300)).await,
            Event::Timeout
        ));
        // HTTP publish without the right: 403; without a token: 401.
        let nt = token("a", 1, 600, |_| {});
        let r = publish_as(s.addr, &nt, r#"{"channel":"ops","data":1}"#);
        assert_eq!((status(&r), body(&r)["error"].as_str()), (403, Some("forbidden")));
        let r = http(
            s.addr,
            "POST",
            "/publish",
            &[("Content-Type", "application/json")],
            r#"{"channel":"ops","data":1}"#,
        );
        assert_eq!(status(&r), 401);
    });
}

#[test]
fn spec4_3_expired_socket_closed_4001_unless_refreshed() {
    let s = Server::start(&["--leeway", "0"]);
    block_on(async {
        let (mut short, w) = ws_bearer(s.addr, &token("s", 0, 2, |_| {})).await;
        let exp = w["expires_at"].as_u64().unwrap();
        // Less than 60 s left: the expiring notice comes at once.
        let n = recv(&mut short).await;
        assert_eq!(
            (n["type"].as_str(), n["expires_at"].as_u64()),
            (Some("expiring"), Some(exp))
        );
        assert_eq!(close_code(&mut short, Duration::from_secs(6)).await, Some(4001));

        let (mut kept, _) = ws_bearer(s.addr, &token("k", 0, 2, |_| {})).await;
        assert_eq!(recv(&mut kept).await["type"], "expiring");
        send(
            &mut kept,
            json!({"type":"refresh","token": token("other", 0, 600, |_| {}),"ref":1}),
        )
        .await;
        assert_eq!(recv(&mut kept).await["code"], "invalid_claims");
        let fresh = token("k", 0, 600, |_| {});
        send(&mut kept, json!({"type":"refresh","token": fresh,"ref":2})).await;
        let r = recv(&mut kept).await;
        assert_eq!((r["type"].as_str(), r["ref"].as_u64()), (Some("refreshed"), Some(2)));
        assert!(r["expires_at"].as_u64().unwrap() >= now() + 590);
        // Past the old expiry, still open and answering.
        smol::Timer::after(Duration::from_secs(4)).await;
        send(&mut kept, json!({"type":"ping"})).await;
        assert_eq!(recv(&mut kept).await["type"], "pong");
    });
}

#[test]
fn spec4_3_refresh_that_lowers_rights_drops_subscriptions() {
    let s = Server::start(&["--channel", "briefing=3"]);
    block_on(async {
        let (mut ws, _) = ws_bearer(s.addr, &token("r", 3, 600, |_| {})).await;
        send(&mut ws, json!({"type":"subscribe","channel":"briefing"})).await;
        recv(&mut ws).await;
        send(&mut ws, json!({"type":"refresh","token": token("r", 1, 600, |_| {})})).await;
        assert_eq!(
            recv(&mut ws).await,
            json!({"type":"unsubscribed","channel":"briefing","reason":"forbidden"})
        );
        assert_eq!(recv(&mut ws).await["type"], "refreshed");
    });
}

#[test]
fn spec4_3_slow_consumer_closed_4008_others_unaffected() {
    let s = Server::start(&["--queue-depth", "4"]);
    block_on(async {
        let (mut slow, _) = ws_bearer(s.addr, &token("slow", 0, 600, |_| {})).await;
        let (mut fast, _) = ws_bearer(s.addr, &token("fast", 0, 600, |_| {})).await;
        for ws in [&mut slow, &mut fast] {
            send(ws, json!({"type":"subscribe","channel":"firehose"})).await;
            recv(ws).await;
        }
        // `slow` stops reading; publish far more than its socket buffers hold.
        let hq = token("hq", 0, 600, |c| c.publish = true);
        let big = "x".repeat(12_000);
        let mut got = 0;
        for _ in 0..400 {
            let r = publish_as(s.addr, &hq, &format!(r#"{{"channel":"firehose","data":"{big}"}}"#));
            assert_eq!(status(&r), 202);
            // `fast` keeps up.
            assert_eq!(recv(&mut fast).await["type"], "message");
            got += 1;
        }
        assert_eq!(got, 400);
        s.wait_log(&["ws_close", "\"code\":4008"]);
        let m = http(s.addr, "GET", "/metrics", &[], "");
        assert!(m.contains("tessera_slow_consumers_total 1"), "{m}");
        // Once it reads again, the slow one finds its stream ended after what
        // was buffered: with the 4008 close frame when the server could still
        // send it, else without (a peer that takes no data cannot get one).
        let mut seen = 0;
        loop {
            match next_event(&mut slow, Duration::from_secs(10)).await {
                Event::Json(_) => seen += 1,
                Event::Close(c) => {
                    assert!(matches!(c, Some(4008) | None), "{c:?}");
                    break;
                }
                Event::Error(_) => break,
                Event::Timeout => panic!("the slow consumer was not closed"),
            }
        }
        assert!(seen < 400, "{seen}");
    });
}

/// A close order reaches a socket stuck writing to a peer that stopped
/// reading, even when a ping came due meanwhile (the ping must not be
/// queued behind the stuck write and hold the task there).
#[test]
fn spec5_shutdown_reaches_a_socket_stuck_in_a_write() {
    // A ping comes due at 3 s while the write is stuck; the pong deadline
    // (6 s, when the stuck write is cut short: issue 14) is after the TERM.
    let mut s = Server::start(&["--queue-depth", "100000", "--ping-interval", "3"]);
    block_on(async {
        let (mut slow, _) = ws_bearer(s.addr, &token("stuck", 0, 600, |_| {})).await;
        send(&mut slow, json!({"type":"subscribe","channel":"firehose"})).await;
        recv(&mut slow).await;
        // `stuck` stops reading; fill its socket buffers.
        let hq = token("hq", 0, 600, |c| c.publish = true);
        let big = "x".repeat(12_000);
        for _ in 0..600 {
            let r = publish_as(s.addr, &hq, &format!(r#"{{"channel":"firehose","data":"{big}"}}"#));
            assert_eq!(status(&r), 202);
        }
        // A ping comes due while the write is stuck.
        smol::Timer::after(Duration::from_millis(2500)).await;
        s.signal("TERM");
        s.wait_log(&["ws_close", "\"sub\":\"stuck\"", "\"code\":1001"]);
        drop(slow);
    });
    assert_eq!(s.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn spec4_3_oversize_message_closed_1009() {
    let s = Server::start(&["--max-message-bytes", "1024"]);
    block_on(async {
        let (mut ws, _) = ws_bearer(s.addr, &token("big", 0, 600, |_| {})).await;
        let _ = ws
            .send(async_tungstenite::tungstenite::Message::text("y".repeat(4096)))
            .await;
        assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await, Some(1009));
    });
}

#[test]
fn spec5_sigterm_closes_sockets_1001_and_exits_0() {
    let mut s = Server::start(&[]);
    block_on(async {
        let (mut ws, _) = ws_bearer(s.addr, &token("t", 0, 600, |_| {})).await;
        s.signal("TERM");
        assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await, Some(1001));
    });
    assert_eq!(s.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(s.logs().contains("\"shutdown\""));
}

/// A connection whose upgrade request is finished after the TERM gets its
/// `101` and `welcome`, then a 1001 close like every other socket (SPEC §5),
/// not a socket dropped without a close frame when the process exits.
#[test]
fn spec5_an_upgrade_finished_during_shutdown_is_closed_1001() {
    use std::io::{Read, Write};
    let mut s = Server::start(&[]);
    // A socket that does not answer its close keeps the shutdown waiting
    // (a connection still in its handshake alone would not).
    let (_silent, _) = block_on(ws_bearer(s.addr, &token("silent", 0, 600, |_| {})));
    let t = token("late", 0, 600, |_| {});
    let req = upgrade("/ws", &format!("Authorization: Bearer {t}\r\n"));
    let (first, rest) = req.split_at(20);
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    c.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    s.signal("TERM");
    s.wait_log(&["\"shutdown\""]);
    c.write_all(rest).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut bytes = Vec::new();
    let _ = c.read_to_end(&mut bytes);
    let out = String::from_utf8_lossy(&bytes).to_string();
    assert!(out.starts_with("HTTP/1.1 101 "), "{out:?}");
    // The server's frames after the head (unmasked): opcode and payload.
    let mut frames = Vec::new();
    let mut rest = bytes
        .get(out.find("\r\n\r\n").map_or(bytes.len(), |i| i + 4)..)
        .unwrap_or_default();
    while let [b0, b1, tail @ ..] = rest {
        let (len, tail) = match b1 & 0x7f {
            126 => (usize::from(u16::from_be_bytes([tail[0], tail[1]])), &tail[2..]),
            n => (usize::from(n), tail),
        };
        frames.push((b0 & 0x0f, tail[..len].to_vec()));
        rest = &tail[len..];
    }
    assert_eq!(frames.first().map(|f| f.0), Some(1), "the welcome first: {out:?}");
    let close = frames.iter().find(|f| f.0 == 8).map(|f| f.1.clone());
    assert_eq!(
        close.as_deref().and_then(|p| p.get(..2)),
        Some(&[0x03, 0xe9][..]),
        "a 1001 close frame: {out:?}\n{}",
        s.logs()
    );
    assert_eq!(s.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn spec4_http_errors_health_metrics() {
    let s = Server::start(&[]);
    let r = http(s.addr, "GET", "/healthz", &[], "");
    let b = body(&r);
    assert_eq!(
        (status(&r), b["status"].as_str(), b["connections"].as_u64()),
        (200, Some("ok"), Some(0))
    );
    assert_eq!(b["version"], env!("CARGO_PKG_VERSION"));
    let r = http(s.addr, "GET", "/nope", &[], "");
    assert_eq!((status(&r), body(&r)["error"].as_str()), (404, Some("not_found")));
    let r = http(s.addr, "DELETE", "/healthz", &[], "");
    assert_eq!((status(&r), header(&r, "allow")), (405, Some("GET")));
    let r = raw(s.addr, b"POST /publish HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status(&r), 411);
    let r = raw(
        s.addr,
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n\r\n",
    );
    assert_eq!(status(&r), 413);
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    assert_eq!(status(&raw(s.addr, big.as_bytes())), 431);
    // Every error body is {"error","message"}.
    let b = body(&http(s.addr, "GET", "/nope", &[], ""));
    assert!(b["message"].is_string());
    let m = http(s.addr, "GET", "/metrics", &[], "");
    for name in [
        "tessera_connections",
        "tessera_handshakes_total",
        "tessera_logins_total",
        "tessera_messages_in_total",
        "tessera_messages_out_total",
        "tessera_slow_consumers_total",
    ] {
        assert!(m.contains(name), "{name}");
    }
    // Keep-alive: two requests on one connection.
    let r = raw(
        s.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.matches("HTTP/1.1 200 OK").count(), 2, "{r}");
}

#[test]
fn spec4_slowloris_head_dropped_at_handshake_timeout() {
    use std::io::{Read, Write};
    let s = Server::start(&["--handshake-timeout", "1"]);
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the server to hang up");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn spec7_logs_are_json_lines_without_tokens() {
    let s = Server::start(&[]);
    let t = token("logged", 0, 600, |_| {});
    block_on(async {
        let (ws, _) = ws_bearer(s.addr, &t).await;
        drop(ws);
    });
    let _ = raw(s.addr, &upgrade("/ws", &format!("Authorization: Bearer {t}x\r\n")));
    let _ = raw(s.addr, &upgrade("/ws", &format!("Cookie: tessera_access={t}\r\n")));
    s.wait_log(&["ws_close", "logged"]);
    s.wait_log(&["ws_reject", "bad_signature", "127.0.0.1"]);
    let logs = s.logs();
    assert!(!logs.contains(&t[..40]), "token in logs:\n{logs}");
    assert!(!logs.contains(KEY));
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(v["ts"].as_str().unwrap().ends_with('Z') && v["event"].is_string() && v["level"].is_string());
    }
}

#[test]
fn spec2_sighup_reloads_keys_and_users_without_dropping_sockets() {
    let dir = scratch_dir("server", "hup");
    let key_file = dir.join("key");
    let users_file = dir.join("users");
    std::fs::write(&key_file, format!("old:{KEY}\n")).unwrap();
    std::fs::write(&users_file, "").unwrap();
    let s = Server::start_with_env(
        &[
            "--secret-file",
            key_file.to_str().unwrap(),
            "--users",
            users_file.to_str().unwrap(),
        ],
        &[],
    );
    let keys_old = tessera::keys::KeySet::parse(&format!("old:{KEY}")).unwrap();
    let mint = |keys: &tessera::keys::KeySet, sub: &str| {
        let c = tessera::jwt::Claims {
            sub: sub.into(),
            exp: (now() + 600) as f64,
            ..Default::default()
        };
        tessera::jwt::sign(&c, keys, None).unwrap()
    };
    block_on(async {
        let (mut ws, _) = ws_bearer(s.addr, &mint(&keys_old, "before")).await;
        let new_key = "new-key-ZYXWVUTSRQPONMLKJIHGFEDCBA-0123456789";
        std::fs::write(&key_file, format!("new:{new_key}\n")).unwrap();
        write_users(&dir, [user("late", 0, false, "pw")]);
        s.signal("HUP");
        s.wait_log(&["reload", "\"keys\":1"]);
        // The open socket lives on.
        send(&mut ws, json!({"type":"ping"})).await;
        assert_eq!(recv(&mut ws).await["type"], "pong");
        // New handshakes use the new key file.
        let keys_new = tessera::keys::KeySet::parse(&format!("new:{new_key}")).unwrap();
        let r = raw(
            s.addr,
            &upgrade("/ws", &format!("Authorization: Bearer {}\r\n", mint(&keys_old, "old"))),
        );
        assert_eq!(body(&r)["error"], "unknown_kid", "{r}");
        let r = raw(
            s.addr,
            &upgrade("/ws", &format!("Authorization: Bearer {}\r\n", mint(&keys_new, "new"))),
        );
        assert_eq!(status(&r), 101, "{r}");
        // And the new users file.
        let r = http(
            s.addr,
            "POST",
            "/auth/login",
            &[("Content-Type", "application/json")],
            r#"{"username":"late","password":"pw"}"#,
        );
        assert_eq!(status(&r), 200, "{r}");
        // A broken key file keeps the current keys.
        std::fs::write(&key_file, "short\n").unwrap();
        s.signal("HUP");
        s.wait_log(&["reload_failed"]);
        let r = raw(
            s.addr,
            &upgrade(
                "/ws",
                &format!("Authorization: Bearer {}\r\n", mint(&keys_new, "still")),
            ),
        );
        assert_eq!(status(&r), 101, "{r}");
    });
    assert!(!s.logs().contains(KEY));
}

#[test]
fn spec4_3_silent_peer_closed_after_a_ping_interval() {
    use std::io::Read;
    let s = Server::start(&["--ping-interval", "1"]);
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    std::io::Write::write_all(
        &mut c,
        &upgrade(
            "/ws",
            &format!("Authorization: Bearer {}\r\n", token("mute", 0, 600, |_| {})),
        ),
    )
    .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    // Read (and never answer) until the server hangs up.
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("server did not hang up: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(got.windows(2).any(|w| w == [0x89, 0x00]), "no ping frame seen");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "{took:?}"
    );
    s.wait_log(&["ws_close", "no pong"]);
}
