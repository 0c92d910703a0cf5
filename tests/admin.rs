//! SPEC §13 black-box: operators and the admin API, the security-event
//! ring and its live `$security` channel, revoke, presence, the metrics,
//! and the ring staying bounded under a flood of failed handshakes.

mod common;

use common::*;
use serde_json::{Value, json};
use smol::block_on;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Users `hq` (5, publish) and `agent-7` (2).
fn users_file(dir: &Path) -> PathBuf {
    write_users(
        dir,
        [
            user("hq", 5, true, "hq-pass-7f3a"),
            user("agent-7", 2, false, "a7-pass-91c2"),
        ],
    )
}

fn start_in(dir: &Path, extra: &[&str]) -> Server {
    let users = users_file(dir);
    let state = dir.join("state.json");
    let mut args = vec![
        "--users".to_string(),
        users.display().to_string(),
        "--state".to_string(),
        state.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&refs)
}

fn op() -> String {
    token("hq", 5, 600, |c| c.publish = true)
}

fn get(s: &Server, path: &str, tok: &str) -> String {
    http(s.addr, "GET", path, &[("Authorization", &format!("Bearer {tok}"))], "")
}

fn revoke(s: &Server, tok: &str, body: &Value) -> String {
    let auth = format!("Bearer {tok}");
    http(
        s.addr,
        "POST",
        "/admin/revoke",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        &body.to_string(),
    )
}

fn login(s: &Server, user: &str, pw: &str) -> Value {
    let r = http(
        s.addr,
        "POST",
        "/auth/login",
        &[("Content-Type", "application/json")],
        &json!({"username":user,"password":pw}).to_string(),
    );
    body(&r)
}

fn connections(s: &Server) -> Vec<Value> {
    let r = get(s, "/admin/connections", &op());
    assert_eq!(status(&r), 200, "{r}");
    body(&r)["connections"].as_array().unwrap().clone()
}

/// Every event kept (oldest first), paging with `after`.
fn all_events(s: &Server) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let r = get(s, &format!("/admin/events?after={after}&limit=1000"), &op());
        assert_eq!(status(&r), 200, "{r}");
        let page = body(&r)["events"].as_array().unwrap().clone();
        match page.last() {
            Some(e) => after = e["id"].as_u64().unwrap(),
            None => return out,
        }
        out.extend(page);
    }
}

/// Waits until `f` holds (5 s).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn spec13_operators_only_and_off_is_404() {
    let off = Server::start(&[]);
    for (m, p) in [
        ("GET", "/admin/connections"),
        ("GET", "/admin/events"),
        ("POST", "/admin/revoke"),
    ] {
        let auth = format!("Bearer {}", op());
        let r = http(
            off.addr,
            m,
            p,
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            "{\"sub\":\"x\"}",
        );
        assert_eq!(status(&r), 404, "{p}: {r}");
    }

    let s = Server::start(&["--admin-min-clearance", "5"]);
    let r = get(&s, "/admin/connections", &token("agent", 4, 600, |_| {}));
    assert_eq!(
        (status(&r), body(&r)["error"].as_str()),
        (403, Some("forbidden")),
        "{r}"
    );
    let r = revoke(&s, &token("agent", 4, 600, |_| {}), &json!({"sub":"hq"}));
    assert_eq!(status(&r), 403, "{r}");
    let r = http(s.addr, "GET", "/admin/events", &[], "");
    assert_eq!((status(&r), body(&r)["error"].as_str()), (401, Some("missing_token")));
    let r = get(&s, "/admin/events", &token("hq", 5, -120, |_| {}));
    assert_eq!((status(&r), body(&r)["error"].as_str()), (401, Some("token_expired")));
    assert_eq!(status(&get(&s, "/admin/events", &op())), 200);
    assert_eq!(status(&get(&s, "/admin/connections", &token("x", 9, 60, |_| {}))), 200);
    let r = http(s.addr, "POST", "/admin/events", &[], "");
    assert_eq!(status(&r), 405);

    // The cookie: from an allowed Origin, or a browser's same-origin GET.
    let cookie = format!("tessera_access={}", op());
    let r = http(s.addr, "GET", "/admin/connections", &[("Cookie", &cookie)], "");
    assert_eq!(
        (status(&r), body(&r)["error"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    let same = [("Cookie", cookie.as_str()), ("Sec-Fetch-Site", "same-origin")];
    assert_eq!(status(&http(s.addr, "GET", "/admin/connections", &same, "")), 200);
    let cross = [("Cookie", cookie.as_str()), ("Sec-Fetch-Site", "cross-site")];
    assert_eq!(status(&http(s.addr, "GET", "/admin/connections", &cross, "")), 403);
    let origin = format!("http://{}", s.addr);
    let post = [
        ("Cookie", cookie.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
        ("Content-Type", "application/json"),
    ];
    let r = http(s.addr, "POST", "/admin/revoke", &post, "{\"sub\":\"nobody\"}");
    assert_eq!(status(&r), 403, "a POST needs the Origin: {r}");
    let host = s.addr.to_string();
    let post = [
        ("Cookie", cookie.as_str()),
        ("Origin", origin.as_str()),
        ("Host", host.as_str()),
        ("Content-Type", "application/json"),
    ];
    let r = http(s.addr, "POST", "/admin/revoke", &post, "{\"sub\":\"nobody\"}");
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(body(&r), json!({"revoked":0,"closed":0}));
    for bad in [
        "{}",
        "{\"sub\":\"a\",\"sid\":\"b\"}",
        "{\"sub\":\"\"}",
        "{\"sub\":5}",
        "[]",
        "{\"who\":1}",
    ] {
        let auth = format!("Bearer {}", op());
        let h = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        let r = http(s.addr, "POST", "/admin/revoke", &h, bad);
        assert_eq!(status(&r), 400, "{bad}: {r}");
    }

    // With --mfa-min-clearance, an operator's token needs otp in amr.
    let s = Server::start(&["--admin-min-clearance", "5", "--mfa-min-clearance", "9"]);
    assert_eq!(status(&get(&s, "/admin/events", &op())), 403);
    let with_otp = token("hq", 5, 600, |c| c.amr = Some(vec!["pwd".into(), "otp".into()]));
    assert_eq!(status(&get(&s, "/admin/events", &with_otp)), 200);

    // --demo makes clearance 5 (hq) an operator.
    let demo = Server::start(&["--demo"]);
    assert_eq!(status(&get(&demo, "/admin/events", &op())), 200);
    assert_eq!(status(&get(&demo, "/admin/events", &token("a", 4, 60, |_| {}))), 403);
}

#[test]
fn spec13_connections_list_matches_reality() {
    let s = Server::start(&["--admin-min-clearance", "5"]);
    assert!(connections(&s).is_empty());
    block_on(async {
        let t0 = now() * 1000;
        let (mut a, _) = ws_bearer(s.addr, &token("agent-a", 2, 600, |c| c.sid = Some("S1".into()))).await;
        send(&mut a, json!({"type":"subscribe","channel":"ops"})).await;
        assert_eq!(recv(&mut a).await["type"], "subscribed");
        let (b, _) = ws_bearer(s.addr, &token("agent-b", 0, 600, |_| {})).await;
        let list = connections(&s);
        assert_eq!(list.len(), 2, "{list:?}");
        let ca = list.iter().find(|c| c["sub"] == "agent-a").unwrap();
        assert_eq!(ca["clearance"], 2);
        assert_eq!(ca["sid"], "S1");
        assert_eq!(ca["channels"], json!(["@agent-a", "ops"]));
        assert_eq!(ca["messages_in"], 1);
        assert_eq!(ca["messages_out"], 2, "welcome and subscribed");
        assert_eq!(ca["queued"], 0);
        assert!(ca["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
        let since = ca["since_ms"].as_u64().unwrap();
        assert!(since >= t0 && since <= now() * 1000 + 1000, "{since}");
        let cb = list.iter().find(|c| c["sub"] == "agent-b").unwrap();
        assert!(cb["sid"].is_null());
        assert!(ca["conn"].as_u64().unwrap() < cb["conn"].as_u64().unwrap());
        drop(b);
        eventually("agent-b gone", || connections(&s).len() == 1);
        send(&mut a, json!({"type":"unsubscribe","channel":"ops"})).await;
        assert_eq!(recv(&mut a).await["type"], "unsubscribed");
        let list = connections(&s);
        assert_eq!(list[0]["channels"], json!(["@agent-a"]));
        drop(a);
        eventually("all gone", || connections(&s).is_empty());
    });
}

#[test]
fn spec13_events_of_every_kind_without_secrets() {
    let dir = scratch_dir("admin", "kinds");
    let s = start_in(
        &dir,
        &["--admin-min-clearance", "5", "--queue-depth", "1", "--history", "0"],
    );
    let bad_token = token("mallory", 1, 600, |_| {}).replace('.', ".x");
    let good = token("agent-q", 1, 600, |_| {});
    // ws_reject: a forged token; a token in the query string (not allowed).
    let r = raw(
        s.addr,
        &upgrade("/ws", &format!("Authorization: Bearer {bad_token}\r\n")),
    );
    assert_eq!(status(&r), 401, "{r}");
    let r = raw(
        s.addr,
        &upgrade(&format!("/ws?access_token={good}"), "Cookie: other=1\r\n"),
    );
    assert_eq!(status(&r), 401, "{r}");
    // login_failed: a wrong password, and an unknown name (someone's password
    // typed into the name field).
    login(&s, "agent-7", "wrong-secret-pw-1");
    login(&s, "typed-password-in-name-field", "x");
    // refresh_reused.
    let l = login(&s, "agent-7", "a7-pass-91c2");
    let rt = l["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(status(&refresh(&s, &rt)), 200);
    assert_eq!(status(&refresh(&s, &rt)), 401);
    // revoked.
    assert_eq!(status(&revoke(&s, &op(), &json!({"sub":"agent-7"}))), 200);
    // slow_consumer: a socket that never reads, under big publishes.
    block_on(async {
        let (mut stuck, _) = ws_bearer(s.addr, &token("stuck", 0, 600, |_| {})).await;
        send(&mut stuck, json!({"type":"subscribe","channel":"big"})).await;
        let big = "y".repeat(16_000);
        let hq = token("hq", 5, 600, |c| c.publish = true);
        let until = Instant::now() + Duration::from_secs(60);
        while !s.logs().contains("\"code\":4008") {
            assert!(Instant::now() < until, "no 4008: {}", s.logs());
            let r = publish_as(s.addr, &hq, &json!({"channel":"big","data":&big}).to_string());
            assert_eq!(status(&r), 202, "{r}");
        }
        drop(stuck);
    });
    // ip_throttled: ten failures from one address (four so far).
    for _ in 0..8 {
        raw(s.addr, &upgrade("/ws", ""));
    }

    let events = all_events(&s);
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    for k in [
        "ws_reject",
        "login_failed",
        "ip_throttled",
        "refresh_reused",
        "revoked",
        "slow_consumer",
    ] {
        assert!(kinds.contains(&k), "{k} missing in {kinds:?}");
    }
    let find = |kind: &str, reason: &str| {
        events
            .iter()
            .find(|e| e["event"] == kind && e["reason"] == reason)
            .unwrap_or_else(|| panic!("no {kind}/{reason} in {events:?}"))
    };
    assert!(
        find("ws_reject", "bad_signature")["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    find("ws_reject", "missing_token");
    assert_eq!(find("login_failed", "wrong_password")["sub"], "agent-7");
    assert!(find("login_failed", "unknown_user")["sub"].is_null());
    assert_eq!(find("refresh_reused", "refresh_token_reused")["sub"], "agent-7");
    let rv = find("revoked", "operator");
    assert_eq!((&rv["sub"], &rv["by"]), (&json!("agent-7"), &json!("hq")));
    assert_eq!(find("ip_throttled", "too_many_failures")["peer"], "127.0.0.1");
    assert_eq!(find("slow_consumer", "queue_over_depth")["sub"], "stuck");
    for e in &events {
        assert!(e["ts"].as_u64().unwrap() > 1_700_000_000_000, "ts in ms: {e}");
    }
    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids count up: {ids:?}");

    let text = serde_json::to_string(&events).unwrap();
    for secret in [
        bad_token.as_str(),
        good.as_str(),
        rt.as_str(),
        l["access_token"].as_str().unwrap(),
        "wrong-secret-pw-1",
        "a7-pass-91c2",
        "typed-password-in-name-field",
        "access_token",
        "other=1",
        "tessera_access",
        "?",
    ] {
        assert!(!text.contains(secret), "{secret:?} in {text}");
    }

    let m = http(s.addr, "GET", "/metrics", &[], "");
    for line in [
        "tessera_auth_failures_total{reason=\"bad_signature\"} 1",
        "tessera_auth_failures_total{reason=\"wrong_password\"} 1",
        "tessera_auth_failures_total{reason=\"unknown_user\"} 1",
        "tessera_auth_failures_total{reason=\"refresh_token_reused\"} 1",
        "tessera_security_events_total{event=\"revoked\"} 1",
        "tessera_security_events_total{event=\"slow_consumer\"} 1",
        "tessera_security_events_total{event=\"ip_throttled\"} 1",
        "tessera_security_events_total{event=\"refresh_reused\"} 1",
    ] {
        assert!(m.contains(line), "{line} missing in\n{m}");
    }
}

#[test]
fn spec13_event_paging() {
    let s = Server::start(&["--admin-min-clearance", "5"]);
    // Forged tokens: 401s, but fewer than ten per address would throttle;
    // the throttle's own 429s are events too, which is fine here.
    for _ in 0..25 {
        raw(s.addr, &upgrade("/ws", "Authorization: Bearer x.y.z\r\n"));
    }
    let r = get(&s, "/admin/events?limit=5", &op());
    let b = body(&r);
    let page = b["events"].as_array().unwrap();
    let last = b["last_id"].as_u64().unwrap();
    assert!(last >= 25, "{b}");
    let ids: Vec<u64> = page.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(
        ids,
        ((last - 4)..=last).collect::<Vec<_>>(),
        "the newest five, oldest first"
    );
    let b = body(&get(&s, "/admin/events?after=3&limit=4", &op()));
    let ids: Vec<u64> = b["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [4, 5, 6, 7]);
    let b = body(&get(&s, &format!("/admin/events?after={last}"), &op()));
    assert_eq!(b["events"], json!([]));
    let b = body(&get(&s, "/admin/events", &op()));
    assert_eq!(b["events"].as_array().unwrap().len() as u64, last.min(100));
    for bad in ["after=-1", "limit=x", "after=1e3", "limit=99999999999999999999999"] {
        let r = get(&s, &format!("/admin/events?{bad}"), &op());
        assert_eq!(status(&r), 400, "{bad}: {r}");
    }
    let b = body(&get(&s, "/admin/events?after=0&limit=5000", &op()));
    assert_eq!(b["events"].as_array().unwrap().len() as u64, last.min(1000));
}

#[test]
fn spec13_revoke_by_sub_closes_every_socket_and_kills_refresh() {
    let dir = scratch_dir("admin", "revoke");
    let s = start_in(&dir, &["--admin-min-clearance", "5"]);
    let (l1, l2) = (
        login(&s, "agent-7", "a7-pass-91c2"),
        login(&s, "agent-7", "a7-pass-91c2"),
    );
    let l3 = login(&s, "agent-7", "a7-pass-91c2");
    let lhq = login(&s, "hq", "hq-pass-7f3a");
    let at = |l: &Value| l["access_token"].as_str().unwrap().to_string();
    let rt = |l: &Value| l["refresh_token"].as_str().unwrap().to_string();
    block_on(async {
        let (mut s1, _) = ws_bearer(s.addr, &at(&l1)).await;
        let (mut s2, _) = ws_bearer(s.addr, &at(&l2)).await;
        // A token minted offline has no session: its socket is closed too.
        let (mut s3, _) = ws_bearer(s.addr, &token("agent-7", 2, 600, |_| {})).await;
        let (mut other, _) = ws_bearer(s.addr, &at(&lhq)).await;

        let r = revoke(&s, &op(), &json!({"sub":"agent-7"}));
        assert_eq!(status(&r), 200, "{r}");
        assert_eq!(body(&r), json!({"revoked":3,"closed":3}));
        for ws in [&mut s1, &mut s2, &mut s3] {
            assert_eq!(close_code(ws, Duration::from_secs(5)).await, Some(4003));
        }
        send(&mut other, json!({"type":"ping"})).await;
        assert_eq!(recv(&mut other).await["type"], "pong", "others stay");
        // The revoked sessions' access tokens no longer open a socket.
        let r = raw(
            s.addr,
            &upgrade("/ws", &format!("Authorization: Bearer {}\r\n", at(&l3))),
        );
        assert_eq!((status(&r), body(&r)["error"].as_str()), (401, Some("token_revoked")));
    });
    for l in [&l1, &l2, &l3] {
        let r = refresh(&s, &rt(l));
        assert_eq!(status(&r), 401, "{r}");
    }
    // Revoke by sid: that session only.
    let l4 = login(&s, "agent-7", "a7-pass-91c2");
    let l5 = login(&s, "agent-7", "a7-pass-91c2");
    block_on(async {
        let (mut s4, _) = ws_bearer(s.addr, &at(&l4)).await;
        let (mut s5, _) = ws_bearer(s.addr, &at(&l5)).await;
        // The sid of s4's session, from the connections list (the newest two).
        let list = connections(&s);
        let mut mine: Vec<&Value> = list.iter().filter(|c| c["sub"] == "agent-7").collect();
        mine.sort_by_key(|c| c["conn"].as_u64());
        let sid4 = mine[0]["sid"].as_str().unwrap().to_string();
        let r = revoke(&s, &op(), &json!({ "sid": sid4 }));
        assert_eq!(body(&r), json!({"revoked":1,"closed":1}), "{r}");
        assert_eq!(close_code(&mut s4, Duration::from_secs(5)).await, Some(4003));
        send(&mut s5, json!({"type":"ping"})).await;
        assert_eq!(recv(&mut s5).await["type"], "pong");
    });
    assert_eq!(status(&refresh(&s, &rt(&l4))), 401);
    let fresh = refresh(&s, &rt(&l5));
    assert_eq!(status(&fresh), 200, "{fresh}");
    // Persisted like a logout: a restart keeps the revocations.
    drop(s);
    let s = start_in(&dir, &["--admin-min-clearance", "5"]);
    assert_eq!(status(&refresh(&s, &rt(&l1))), 401);
    let r = raw(
        s.addr,
        &upgrade("/ws", &format!("Authorization: Bearer {}\r\n", at(&l2))),
    );
    assert_eq!(body(&r)["error"], "token_revoked", "{r}");
}

#[test]
fn spec13_security_channel_delivers_events_live_to_operators_only() {
    let s = Server::start(&["--admin-min-clearance", "5"]);
    block_on(async {
        let (mut ops, _) = ws_bearer(s.addr, &op()).await;
        send(&mut ops, json!({"type":"subscribe","channel":"$security","ref":1})).await;
        let r = recv(&mut ops).await;
        assert_eq!(
            (r["type"].as_str(), r["channel"].as_str()),
            (Some("subscribed"), Some("$security")),
            "{r}"
        );
        let (mut agent, _) = ws_bearer(s.addr, &token("agent", 4, 600, |c| c.channels = Some(vec!["*".into()]))).await;
        send(&mut agent, json!({"type":"subscribe","channel":"$security"})).await;
        assert_eq!(recv(&mut agent).await["code"], "forbidden");
        for name in ["$other", "$", "$security.x"] {
            send(&mut ops, json!({"type":"subscribe","channel":name})).await;
            assert_eq!(recv(&mut ops).await["code"], "bad_channel", "{name}");
        }
        send(&mut ops, json!({"type":"publish","channel":"$security","data":1})).await;
        assert_eq!(recv(&mut ops).await["code"], "bad_channel", "nobody publishes there");

        // Another client's refused upgrade arrives live.
        let forged = token("eve", 9, 600, |_| {}).replace('.', ".z");
        let r = raw(s.addr, &upgrade("/ws", &format!("Authorization: Bearer {forged}\r\n")));
        assert_eq!(status(&r), 401);
        let m = recv(&mut ops).await;
        assert_eq!(
            (m["type"].as_str(), m["channel"].as_str()),
            (Some("message"), Some("$security")),
            "{m}"
        );
        assert_eq!(m["from"], "$tessera");
        let e = &m["data"];
        assert_eq!(
            (e["event"].as_str(), e["reason"].as_str()),
            (Some("ws_reject"), Some("bad_signature")),
            "{e}"
        );
        assert!(e["id"].as_u64().unwrap() >= 1 && e["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(!m.to_string().contains(&forged));
        // The same event is in the ring.
        let b = body(&get(&s, "/admin/events", &op()));
        assert_eq!(b["events"].as_array().unwrap().last().unwrap(), e);
        // The agent got nothing of it.
        match next_event(&mut agent, Duration::from_millis(300)).await {
            Event::Timeout => {}
            other => panic!("the agent saw {other:?}"),
        }
        send(&mut ops, json!({"type":"unsubscribe","channel":"$security"})).await;
        assert_eq!(recv(&mut ops).await["type"], "unsubscribed");
        raw(s.addr, &upgrade("/ws", ""));
        match next_event(&mut ops, Duration::from_millis(300)).await {
            Event::Timeout => {}
            other => panic!("after unsubscribe: {other:?}"),
        }
    });
    // Without --admin-min-clearance nobody is an operator.
    let off = Server::start(&[]);
    block_on(async {
        let (mut ws, _) = ws_bearer(off.addr, &token("root", u32::MAX, 600, |_| {})).await;
        send(&mut ws, json!({"type":"subscribe","channel":"$security"})).await;
        assert_eq!(recv(&mut ws).await["code"], "forbidden");
    });
}

#[test]
fn spec13_presence_respects_channel_access() {
    let s = Server::start(&["--channel", "secret=3"]);
    block_on(async {
        let (mut a, _) = ws_bearer(s.addr, &token("a", 5, 600, |_| {})).await;
        let (mut a2, _) = ws_bearer(s.addr, &token("a", 5, 600, |_| {})).await;
        let (mut b, _) = ws_bearer(s.addr, &token("b", 3, 600, |_| {})).await;
        let (mut low, _) = ws_bearer(s.addr, &token("low", 0, 600, |_| {})).await;
        for ws in [&mut a, &mut a2, &mut b] {
            send(ws, json!({"type":"subscribe","channel":"secret"})).await;
            assert_eq!(recv(ws).await["type"], "subscribed");
        }
        send(&mut a, json!({"type":"presence","channel":"secret","ref":"p1"})).await;
        let r = recv(&mut a).await;
        assert_eq!(
            r,
            json!({"type":"presence","channel":"secret","subs":["a","b"],"ref":"p1"})
        );
        send(&mut low, json!({"type":"presence","channel":"secret"})).await;
        assert_eq!(recv(&mut low).await["code"], "forbidden");
        send(&mut low, json!({"type":"presence","channel":"@a"})).await;
        assert_eq!(
            recv(&mut low).await["code"],
            "forbidden",
            "personal channels are private"
        );
        send(&mut low, json!({"type":"presence","channel":"$security"})).await;
        assert_eq!(recv(&mut low).await["code"], "forbidden");
        send(&mut low, json!({"type":"presence","channel":"bad name"})).await;
        assert_eq!(recv(&mut low).await["code"], "bad_channel");
        send(&mut low, json!({"type":"presence","channel":"empty"})).await;
        assert_eq!(recv(&mut low).await["subs"], json!([]));
        send(&mut a, json!({"type":"presence","channel":"@a"})).await;
        assert_eq!(recv(&mut a).await["subs"], json!(["a"]));
        send(&mut a, json!({"type":"presence"})).await;
        assert_eq!(recv(&mut a).await["code"], "bad_message");
        drop(b);
        send(&mut a2, json!({"type":"unsubscribe","channel":"secret"})).await;
        assert_eq!(recv(&mut a2).await["type"], "unsubscribed");
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            send(&mut a, json!({"type":"presence","channel":"secret"})).await;
            if recv(&mut a).await["subs"] == json!(["a"]) {
                break;
            }
            assert!(Instant::now() < until, "b never left");
            smol::Timer::after(Duration::from_millis(20)).await;
        }
    });
}

/// VmRSS of a process in KiB (Linux).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn spec13_event_ring_stays_bounded_under_a_flood_of_failed_handshakes() {
    const WARM: usize = 1500;
    const FLOOD: usize = 20_000;
    let s = Server::start(&["--admin-min-clearance", "5"]);
    let bad = upgrade("/ws", "Authorization: Bearer x.y.z\r\n");
    // Fill the ring once, so what follows only replaces events.
    for _ in 0..WARM {
        raw(s.addr, &bad);
    }
    let before = rss_kib(s.child.id());
    for _ in 0..FLOOD {
        raw(s.addr, &bad);
    }
    let after = rss_kib(s.child.id());
    let b = body(&get(&s, "/admin/events?after=0&limit=1000", &op()));
    let last = b["last_id"].as_u64().unwrap();
    // One ws_reject per refused handshake, and an ip_throttled when the
    // address was blocked (the 429s that follow are refusals too).
    assert!(last > (WARM + FLOOD) as u64, "{last}");
    let page = b["events"].as_array().unwrap();
    assert_eq!(page.len(), 1000);
    // The oldest kept is exactly the ring's capacity back from the newest.
    let oldest = page[0]["id"].as_u64().unwrap();
    assert_eq!(last - oldest + 1, tessera::events::CAPACITY as u64);
    let m = http(s.addr, "GET", "/metrics", &[], "");
    assert!(m.contains(&format!(
        "tessera_security_events_total{{event=\"ws_reject\"}} {}",
        WARM + FLOOD
    )));
    // Generous, but 20000 kept events of some 300 bytes would be ~6 MiB.
    assert!(
        after <= before + 3072,
        "VmRSS grew from {before} KiB to {after} KiB over {FLOOD} refused handshakes"
    );
    eprintln!("VmRSS {before} KiB -> {after} KiB over {FLOOD} refused handshakes");
}
