//! SPEC §12 cluster mode, black-box: three real `tessera serve` nodes on one
//! real Redis (Debian's `redis-server`, started here on a free loopback
//! port without persistence and killed by PID). Without `redis-server` on
//! the PATH each test prints `SKIPPED: ...` and passes.
#![cfg(feature = "cluster")]

mod common;

use common::*;
use serde_json::{Value, json};
use smol::block_on;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of this test's own, stopped by PID in `Drop`.
struct Redis {
    child: Option<Child>,
    port: u16,
    /// Extra `redis-server` arguments (passwords, users).
    extra: Vec<String>,
}

impl Redis {
    /// `None` (after printing SKIPPED) when `redis-server` is not installed.
    fn start(test: &str) -> Option<Redis> {
        Redis::start_with(test, &[])
    }

    /// [`Redis::start`] with extra `redis-server` arguments.
    fn start_with(test: &str, extra: &[&str]) -> Option<Redis> {
        // Some tests also read Redis with redis-cli (same Debian package).
        let found = ["redis-server", "redis-cli"].iter().all(|tool| {
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !found {
            println!("SKIPPED: {test}: redis-server or redis-cli is not installed (apt-get install redis-server)");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = Redis {
            child: None,
            port,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        r.launch();
        Some(r)
    }

    fn launch(&mut self) {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < until, "redis-server did not start on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would (its data is gone: no persistence).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-KILL", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &c.id().to_string()])
                .status();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn node(redis: &Redis, id: &str, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str(), "--node-id", id, "--redis-prefix", "t"];
    args.extend_from_slice(extra);
    let s = Server::start(&args);
    s.wait_log(&["broker_up", id]);
    s
}

/// The next `n` messages of `channel`: their `data.n`.
async fn numbers(ws: &mut Ws, channel: &str, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let m = recv(ws).await;
        assert_eq!(
            (m["type"].as_str(), m["channel"].as_str()),
            (Some("message"), Some(channel)),
            "{m}"
        );
        out.push(m["data"]["n"].as_u64().unwrap());
    }
    out
}

async fn quiet(ws: &mut Ws) {
    match next_event(ws, Duration::from_millis(300)).await {
        Event::Timeout => {}
        other => panic!("expected nothing, got {other:?}"),
    }
}

fn publish(s: &Server, channel: &str, n: u64) -> String {
    publish_as(s.addr, &hq(), &json!({"channel":channel,"data":{"n":n}}).to_string())
}

#[test]
fn spec12_a_publish_on_one_node_reaches_every_node_in_the_same_order() {
    let Some(redis) = Redis::start("spec12_a_publish_on_one_node_reaches_every_node_in_the_same_order") else {
        return;
    };
    let nodes = [node(&redis, "a", &[]), node(&redis, "b", &[]), node(&redis, "c", &[])];
    block_on(async {
        let mut subs = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let (mut ws, _) = ws_bearer(n.addr, &token(&format!("r{i}"), 0, 600, |_| {})).await;
            let r = subscribe(&mut ws, "ops", None).await;
            assert_eq!(r["offset"], 0, "{r}");
            subs.push((ws, r["epoch"].as_str().unwrap().to_string()));
        }
        // Every node names the same epoch for the channel.
        assert!(subs.iter().all(|(_, e)| *e == subs[0].1));
        // Publishes on all three nodes, interleaved, WebSocket and HTTP.
        let (mut publisher, _) = ws_bearer(nodes[1].addr, &hq()).await;
        let mut sent = Vec::new();
        for k in 0..30u64 {
            if k % 3 == 1 {
                send(&mut publisher, json!({"type":"publish","channel":"ops","data":{"n":k}})).await;
                let ack = recv(&mut publisher).await;
                assert_eq!(ack["type"], "published", "{ack}");
                assert_eq!(ack["epoch"].as_str(), Some(subs[0].1.as_str()), "{ack}");
            } else {
                let r = publish(&nodes[(k % 3) as usize], "ops", k);
                assert_eq!(status(&r), 202, "{r}");
                assert_eq!(body(&r)["id"], k + 1, "{r}");
            }
            sent.push(k);
        }
        for (ws, _) in subs.iter_mut() {
            assert_eq!(numbers(ws, "ops", 30).await, sent);
            quiet(ws).await;
        }
        let h = body(&http(nodes[2].addr, "GET", "/healthz", &[], ""));
        assert_eq!(
            (h["broker"].as_str(), h["node"].as_str()),
            (Some("up"), Some("c")),
            "{h}"
        );
        let m = http(nodes[0].addr, "GET", "/metrics", &[], "");
        assert!(m.contains("tessera_broker_up 1"), "{m}");
    });
}

#[test]
fn spec12_resume_on_another_node_with_no_gap() {
    let Some(redis) = Redis::start("spec12_resume_on_another_node_with_no_gap") else {
        return;
    };
    let a = node(&redis, "a", &[]);
    let c = node(&redis, "c", &[]);
    block_on(async {
        let t = token("field", 0, 600, |_| {});
        let (mut ws, _) = ws_bearer(a.addr, &t).await;
        let r = subscribe(&mut ws, "ops", None).await;
        let epoch = r["epoch"].as_str().unwrap().to_string();
        for k in 1..=5 {
            assert_eq!(status(&publish(&a, "ops", k)), 202);
        }
        assert_eq!(numbers(&mut ws, "ops", 5).await, [1, 2, 3, 4, 5]);
        drop(ws);
        // Offline: 6..=9 are published on both nodes.
        for k in 6..=9 {
            let on = if k % 2 == 0 { &a } else { &c };
            assert_eq!(status(&publish(on, "ops", k)), 202);
        }
        // Resumes on C from offset 5, while A keeps publishing.
        let (mut ws, _) = ws_bearer(c.addr, &t).await;
        let stream = std::thread::spawn({
            let addr = a.addr;
            move || {
                for k in 10..=40u64 {
                    let r = publish_as(addr, &hq(), &json!({"channel":"ops","data":{"n":k}}).to_string());
                    assert_eq!(status(&r), 202, "{r}");
                }
            }
        });
        let r = subscribe(&mut ws, "ops", Some(json!({"epoch":epoch,"offset":5}))).await;
        assert_eq!(r["recovered"], true, "{r}");
        assert_eq!(r["epoch"].as_str(), Some(epoch.as_str()), "{r}");
        let got = numbers(&mut ws, "ops", 35).await;
        assert_eq!(got, (6..=40).collect::<Vec<u64>>());
        stream.join().unwrap();
        quiet(&mut ws).await;
        // A stale position in the same epoch is resumed from Redis history too.
        let (mut ws2, _) = ws_bearer(c.addr, &token("late", 0, 600, |_| {})).await;
        let r = subscribe(&mut ws2, "ops", Some(json!({"epoch":epoch,"offset":38}))).await;
        assert_eq!(r["recovered"], true, "{r}");
        assert_eq!(numbers(&mut ws2, "ops", 2).await, [39, 40]);
    });
}

#[test]
fn spec12_first_subscribes_racing_a_publish_stream_have_no_gap_or_duplicate() {
    let Some(redis) = Redis::start("spec12_first_subscribes_racing_a_publish_stream_have_no_gap_or_duplicate") else {
        return;
    };
    let a = node(&redis, "a", &[]);
    let c = node(&redis, "c", &[]);
    const CHANNELS: u64 = 16;
    const PER: u64 = 50;
    block_on(async {
        // A stream on A over 16 channels, sent without waiting for acks,
        // while one client per channel subscribes on C for the first time
        // (each subscribe loads its channel from Redis as messages keep
        // arriving by pub/sub).
        let (mut publisher, _) = ws_bearer(a.addr, &hq()).await;
        let stream = async {
            for k in 0..CHANNELS * PER {
                let ch = format!("r{}", k % CHANNELS);
                send(&mut publisher, json!({"type":"publish","channel":ch,"data":{"n":k}})).await;
            }
            for _ in 0..CHANNELS * PER {
                let ack = recv(&mut publisher).await;
                assert_eq!(ack["type"], "published", "{ack}");
            }
        };
        let readers = (0..CHANNELS).map(|i| {
            let addr = c.addr;
            async move {
                smol::Timer::after(Duration::from_millis(3 * i)).await;
                let (mut ws, _) = ws_bearer(addr, &token(&format!("r{i}"), 0, 600, |_| {})).await;
                let ch = format!("r{i}");
                let r = subscribe(&mut ws, &ch, Some(json!({"last": 1000}))).await;
                assert_eq!(r["recovered"], true, "{r}");
                let mut ids = Vec::new();
                while ids.last() != Some(&PER) {
                    let m = recv(&mut ws).await;
                    assert_eq!(m["channel"].as_str(), Some(ch.as_str()), "{m}");
                    ids.push(m["id"].as_u64().unwrap());
                }
                assert_eq!(ids, (1..=PER).collect::<Vec<u64>>(), "{ch}");
                quiet(&mut ws).await;
            }
        });
        futures_util::future::join(stream, futures_util::future::join_all(readers)).await;
    });
}

#[test]
fn spec12_redis_killed_and_restarted_during_a_publish_stream() {
    let Some(mut redis) = Redis::start("spec12_redis_killed_and_restarted_during_a_publish_stream") else {
        return;
    };
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    block_on(async {
        let t = token("watcher", 0, 600, |_| {});
        let (mut ws, _) = ws_bearer(b.addr, &t).await;
        let r = subscribe(&mut ws, "ops", None).await;
        let epoch = r["epoch"].as_str().unwrap().to_string();
        for k in 1..=3 {
            assert_eq!(status(&publish(&a, "ops", k)), 202);
        }
        assert_eq!(numbers(&mut ws, "ops", 3).await, [1, 2, 3]);

        redis.kill();
        a.wait_log(&["broker_down", "\"a\""]);
        b.wait_log(&["broker_down", "\"b\""]);
        // Down: publishes are refused with 503, the socket stays open, and
        // valid tokens still connect.
        let r = publish(&a, "ops", 99);
        assert_eq!(status(&r), 503, "{r}");
        assert_eq!(body(&r)["error"], "broker_unavailable", "{r}");
        let (mut p, _) = ws_bearer(a.addr, &hq()).await;
        send(
            &mut p,
            json!({"type":"publish","channel":"ops","data":{"n":99},"ref":1}),
        )
        .await;
        let e = recv(&mut p).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("broker_unavailable")),
            "{e}"
        );
        let h = body(&http(b.addr, "GET", "/healthz", &[], ""));
        assert_eq!(h["broker"], "down", "{h}");
        assert!(http(b.addr, "GET", "/metrics", &[], "").contains("tessera_broker_up 0"));
        quiet(&mut ws).await;

        // Back, empty (no persistence): a new epoch, never a silent gap.
        redis.launch();
        a.wait_log(&["broker_up", "\"a\""]);
        let until = Instant::now() + Duration::from_secs(15);
        while b.logs().lines().filter(|l| l.contains("broker_up")).nth(1).is_none() {
            assert!(Instant::now() < until, "b did not reconnect:\n{}", b.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        let r = publish(&a, "ops", 4);
        assert_eq!(status(&r), 202, "{r}");
        let new_epoch = body(&r)["epoch"].as_str().unwrap().to_string();
        assert_ne!(new_epoch, epoch);
        assert_eq!(body(&r)["id"], 1, "{r}");
        // The live subscriber on B still gets it.
        assert_eq!(numbers(&mut ws, "ops", 1).await, [4]);
        for k in 5..=6 {
            assert_eq!(status(&publish(&b, "ops", k)), 202);
        }
        assert_eq!(numbers(&mut ws, "ops", 2).await, [5, 6]);
        // A resume from the old epoch is not recovered and gets all there is.
        let (mut late, _) = ws_bearer(a.addr, &token("late", 0, 600, |_| {})).await;
        let r = subscribe(&mut late, "ops", Some(json!({"epoch":epoch,"offset":3}))).await;
        assert_eq!(r["recovered"], false, "{r}");
        assert_eq!(numbers(&mut late, "ops", 3).await, [4, 5, 6]);
        // A resume within the new epoch is recovered.
        let (mut again, _) = ws_bearer(b.addr, &token("again", 0, 600, |_| {})).await;
        let r = subscribe(&mut again, "ops", Some(json!({"epoch":new_epoch,"offset":1}))).await;
        assert_eq!(r["recovered"], true, "{r}");
        assert_eq!(numbers(&mut again, "ops", 2).await, [5, 6]);
    });
    assert!(a.logs().lines().all(|l| !l.contains("panicked")));
}

#[test]
fn spec12_a_node_killed_mid_stream_its_client_resumes_on_another_with_no_gap() {
    let Some(redis) = Redis::start("spec12_a_node_killed_mid_stream_its_client_resumes_on_another_with_no_gap") else {
        return;
    };
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    const N: u64 = 60;
    block_on(async {
        let t = token("field", 0, 600, |_| {});
        let (mut ws, _) = ws_bearer(a.addr, &t).await;
        let r = subscribe(&mut ws, "ops", None).await;
        let epoch = r["epoch"].as_str().unwrap().to_string();
        let stream = std::thread::spawn({
            let addr = b.addr;
            move || {
                for k in 1..=N {
                    let r = publish_as(addr, &hq(), &json!({"channel":"ops","data":{"n":k}}).to_string());
                    assert_eq!(status(&r), 202, "{r}");
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        // The client's position: the last message it got from A.
        let mut last = 0;
        while last < 10 {
            let m = recv(&mut ws).await;
            assert_eq!(m["id"], last + 1, "{m}");
            last = m["id"].as_u64().unwrap();
        }
        a.signal("KILL");
        drop(ws);
        let (mut ws, _) = ws_bearer(b.addr, &t).await;
        let r = subscribe(&mut ws, "ops", Some(json!({"epoch":epoch,"offset":last}))).await;
        assert_eq!(r["recovered"], true, "{r}");
        let mut ids = Vec::new();
        while ids.last() != Some(&N) {
            let m = recv(&mut ws).await;
            assert_eq!(m["type"], "message", "{m}");
            ids.push(m["id"].as_u64().unwrap());
        }
        assert_eq!(ids, (last + 1..=N).collect::<Vec<u64>>());
        stream.join().unwrap();
        quiet(&mut ws).await;
    });
}

/// A users file with `hq` (clearance 5, TOTP) and `agent-7` (no TOTP);
/// passwords `<name>-pass`.
fn users_file(test: &str) -> (Scratch, String, tessera::auth::totp::TotpSecret) {
    use tessera::auth::totp::TotpSecret;
    use tessera::auth::users::User;
    let secret = TotpSecret::from_base32("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP").unwrap();
    let hq = User {
        totp: Some(secret.clone()),
        ..user("hq", 5, false, "hq-pass")
    };
    let dir = scratch_dir("cluster", test);
    let p = write_users(&dir, [hq, user("agent-7", 2, false, "agent-7-pass")]);
    let p = p.to_str().unwrap().to_string();
    (dir, p, secret)
}

/// Three nodes `a`, `b`, `c` on a Redis of their own, all with the test
/// users ([`users_file`]) and `extra` flags. `None` (after SKIPPED) without
/// `redis-server`. The nodes stop before Redis (field order).
struct Cluster {
    nodes: [Server; 3],
    redis: Redis,
    /// The users file's path.
    users: String,
    /// The users file's directory, removed after the nodes stop.
    _dir: Scratch,
}

impl Cluster {
    fn three(test: &str, extra: &[&str]) -> Option<Cluster> {
        let redis = Redis::start(test)?;
        let (dir, users, _) = users_file(test);
        let mut flags = vec!["--users", users.as_str()];
        flags.extend_from_slice(extra);
        let nodes = [
            node(&redis, "a", &flags),
            node(&redis, "b", &flags),
            node(&redis, "c", &flags),
        ];
        drop(flags);
        Some(Cluster {
            nodes,
            redis,
            users,
            _dir: dir,
        })
    }
}

fn login(s: &Server, user: &str, otp: Option<&str>) -> String {
    let mut b = json!({"username": user, "password": format!("{user}-pass")});
    if let Some(c) = otp {
        b["otp"] = json!(c);
    }
    http(
        s.addr,
        "POST",
        "/auth/login",
        &[("Content-Type", "application/json")],
        &b.to_string(),
    )
}

#[test]
fn spec12_a_totp_code_used_on_one_node_is_refused_on_another() {
    let Some(mut redis) = Redis::start("spec12_a_totp_code_used_on_one_node_is_refused_on_another") else {
        return;
    };
    let (_dir, users, secret) = users_file("totp");
    let a = node(&redis, "a", &["--users", &users]);
    let b = node(&redis, "b", &["--users", &users]);
    // At least 4 s left in this 30 s step, so "now" is one step for all.
    while now() % 30 >= 26 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let step = now() / 30;
    let code = secret.code_at(step);
    let r = login(&a, "hq", Some(&code));
    assert_eq!(status(&r), 200, "{r}");
    // The same code, and the step before, on B: already used.
    for c in [code.clone(), secret.code_at(step - 1)] {
        let r = login(&b, "hq", Some(&c));
        assert_eq!(
            (status(&r), body(&r)["error"].as_str()),
            (401, Some("invalid_otp")),
            "{r}"
        );
    }
    // The next step's code is fresh: accepted on B, then refused on A.
    let next = secret.code_at(step + 1);
    let r = login(&b, "hq", Some(&next));
    assert_eq!(status(&r), 200, "{r}");
    let refresh = body(&r)["refresh_token"].as_str().unwrap().to_string();
    let r = login(&a, "hq", Some(&next));
    assert_eq!(
        (status(&r), body(&r)["error"].as_str()),
        (401, Some("invalid_otp")),
        "{r}"
    );

    // Redis away: logins and refreshes are 503 state_unavailable.
    redis.kill();
    b.wait_log(&["broker_down", "\"b\""]);
    let r = login(&b, "agent-7", None);
    assert_eq!(
        (status(&r), body(&r)["error"].as_str()),
        (503, Some("state_unavailable")),
        "{r}"
    );
    let r = http(
        b.addr,
        "POST",
        "/auth/refresh",
        &[("Content-Type", "application/json")],
        &json!({"refresh_token": refresh}).to_string(),
    );
    assert_eq!(
        (status(&r), body(&r)["error"].as_str()),
        (503, Some("state_unavailable")),
        "{r}"
    );
}

#[test]
fn spec12_logout_on_one_node_closes_the_sessions_sockets_on_every_node() {
    let Some(cluster) = Cluster::three("logout", &[]) else {
        return;
    };
    let [a, b, c] = &cluster.nodes;
    let r = login(a, "agent-7", None);
    assert_eq!(status(&r), 200, "{r}");
    let access = body(&r)["access_token"].as_str().unwrap().to_string();
    let refresh = body(&r)["refresh_token"].as_str().unwrap().to_string();
    block_on(async {
        let (mut on_a, _) = ws_bearer(a.addr, &access).await;
        let (mut on_c, _) = ws_bearer(c.addr, &access).await;
        // Another agent's socket is left alone.
        let (mut other, _) = ws_bearer(c.addr, &token("someone", 0, 600, |_| {})).await;
        // Logout on B, which never saw the session: by its access token.
        let r = http(
            b.addr,
            "POST",
            "/auth/logout",
            &[("Content-Type", "application/json")],
            &json!({"access_token": access}).to_string(),
        );
        assert_eq!(status(&r), 204, "{r}");
        assert_eq!(close_code(&mut on_a, Duration::from_secs(1)).await, Some(4003));
        assert_eq!(close_code(&mut on_c, Duration::from_secs(1)).await, Some(4003));
        send(&mut other, json!({"type":"ping"})).await;
        assert_eq!(recv(&mut other).await["type"], "pong");
        // The session's tokens are dead on every node.
        for n in [&a, &b, &c] {
            let up = ws_connect(n.addr, &[("Authorization", &format!("Bearer {access}"))]).await;
            assert!(up.is_err(), "a revoked session's token opened a socket");
        }
    });
    let r = http(
        a.addr,
        "POST",
        "/auth/refresh",
        &[("Content-Type", "application/json")],
        &json!({"refresh_token": refresh}).to_string(),
    );
    assert_eq!(status(&r), 401, "{r}");
    // A node started later learns the revocation from Redis.
    let d = node(&cluster.redis, "d", &["--users", &cluster.users]);
    block_on(async {
        std::thread::sleep(Duration::from_millis(200));
        let up = ws_connect(d.addr, &[("Authorization", &format!("Bearer {access}"))]).await;
        assert!(up.is_err(), "a node started later accepted a revoked session");
    });
}

#[test]
fn spec12_failed_logins_count_across_nodes() {
    let Some(cluster) = Cluster::three("throttle", &[]) else {
        return;
    };
    let nodes = &cluster.nodes;
    let wrong = |s: &Server| {
        http(
            s.addr,
            "POST",
            "/auth/login",
            &[("Content-Type", "application/json")],
            &json!({"username":"agent-7","password":"nope"}).to_string(),
        )
    };
    // 4 + 4 + 1 failures: no node reaches the limit of 10 by itself.
    for (n, times) in [(0, 4), (1, 4), (2, 1)] {
        for _ in 0..times {
            let r = wrong(&nodes[n]);
            assert_eq!(status(&r), 401, "{r}");
        }
    }
    let r = login(&nodes[0], "agent-7", None);
    assert_eq!(status(&r), 200, "the 9th failure must not block: {r}");
    // The 10th, on C, starts the block everywhere, also for a right password.
    assert_eq!(status(&wrong(&nodes[2])), 401);
    nodes[2].wait_log(&["ip_throttled"]);
    for n in nodes {
        let r = login(n, "agent-7", None);
        assert_eq!(
            (status(&r), body(&r)["error"].as_str()),
            (429, Some("too_many_attempts")),
            "{r}"
        );
    }
}

#[test]
fn spec12_a_frozen_redis_counts_as_down_and_back_when_it_answers() {
    let Some(redis) = Redis::start("spec12_a_frozen_redis_counts_as_down_and_back_when_it_answers") else {
        return;
    };
    let a = node(&redis, "a", &[]);
    assert_eq!(status(&publish(&a, "ops", 1)), 202);
    // SIGSTOP: the connections stay open but nothing answers.
    redis.signal("STOP");
    let until = Instant::now() + Duration::from_secs(15);
    while !a.logs().contains("no reply to PING") {
        assert!(Instant::now() < until, "no broker_down:\n{}", a.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    a.wait_log(&["broker_down", "no reply to PING"]);
    let r = publish(&a, "ops", 2);
    assert_eq!(
        (status(&r), body(&r)["error"].as_str()),
        (503, Some("broker_unavailable")),
        "{r}"
    );
    redis.signal("CONT");
    let until = Instant::now() + Duration::from_secs(15);
    while a.logs().lines().filter(|l| l.contains("broker_up")).count() < 2 {
        assert!(Instant::now() < until, "no second broker_up:\n{}", a.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Same Redis, same data: the channel goes on in its epoch.
    let r = publish(&a, "ops", 2);
    assert_eq!((status(&r), body(&r)["id"].as_u64()), (202, Some(2)), "{r}");
}

#[test]
fn spec12_redis_password_user_and_database() {
    let Some(redis) = Redis::start_with(
        "spec12_redis_password_user_and_database",
        &[
            "--requirepass",
            "Def4ultPw",
            "--user",
            "app",
            "on",
            ">AppPw77",
            "~*",
            "&*",
            "+@all",
        ],
    ) else {
        return;
    };
    let url = |auth: &str, db: &str| format!("redis://{auth}127.0.0.1:{}{db}", redis.port);
    let start = |u: &str, id: &str| Server::start(&["--redis", u, "--node-id", id, "--redis-prefix", "t"]);
    // The default user's password and database 3; a named user, database 4.
    let a = start(&url(":Def4ultPw@", "/3"), "a");
    a.wait_log(&["broker_up", "\"a\""]);
    let b = start(&url("app:AppPw77@", "/4"), "b");
    b.wait_log(&["broker_up", "\"b\""]);
    let c = start(&url("app:AppPw77@", "/3"), "c");
    c.wait_log(&["broker_up", "\"c\""]);
    let id = |s: &Server| body(&publish(s, "ops", 1))["id"].as_u64();
    // a and c share database 3, b has its own.
    assert_eq!((id(&a), id(&b), id(&c)), (Some(1), Some(1), Some(2)));
    // A wrong password, a wrong user's password, no password: down with
    // the reason, never up, and no password in the log.
    let wrong = start(&url(":Wr0ngPw@", ""), "w");
    wrong.wait_log(&["broker_down", "AUTH refused"]);
    let wrong_user = start(&url("app:Wr0ngPw@", "/3"), "u");
    wrong_user.wait_log(&["broker_down", "AUTH refused"]);
    let none = start(&url("", ""), "n");
    none.wait_log(&["broker_down", "\"n\""]);
    let bad_db = start(&url(":Def4ultPw@", "/99"), "d");
    bad_db.wait_log(&["broker_down", "\"d\""]);
    std::thread::sleep(Duration::from_millis(1500));
    for s in [&wrong, &wrong_user, &none, &bad_db] {
        let logs = s.logs();
        assert!(!logs.contains("broker_up"), "{logs}");
        assert_eq!(logs.matches("broker_down").count(), 1, "{logs}");
        assert!(!logs.contains("Wr0ngPw") && !logs.contains("Def4ultPw"), "{logs}");
        let r = publish(s, "ops", 1);
        assert_eq!(
            (status(&r), body(&r)["error"].as_str()),
            (503, Some("broker_unavailable")),
            "{r}"
        );
    }
    for s in [&a, &b, &c] {
        let logs = s.logs();
        assert!(!logs.contains("AppPw77") && !logs.contains("Def4ultPw"), "{logs}");
    }
}

#[test]
fn spec12_flags() {
    let out = tessera_command()
        .args(["serve", "--redis", "redis://127.0.0.1:1", "--history-dir", "/tmp/x"])
        .env("TESSERA_SECRET", KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--history-dir"));
    // Sessions live in Redis: no state file beside it.
    let out = tessera_command()
        .args(["serve", "--redis", "redis://127.0.0.1:1", "--state", "/tmp/x"])
        .env("TESSERA_SECRET", KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--state"));
    let out = tessera_command()
        .args(["serve", "--redis", "redis://u:hunter2@127.0.0.1:x"])
        .env("TESSERA_SECRET", KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--redis") && !err.contains("hunter2"), "{err}");
    // Redis not there at start: the node serves, says so, and refuses publishes.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{port}");
    let s = Server::start(&["--redis", &url, "--node-id", "lonely"]);
    s.wait_log(&["broker_down", "lonely"]);
    let r = publish(&s, "ops", 1);
    assert_eq!(
        (status(&r), body(&r)["error"].as_str()),
        (503, Some("broker_unavailable")),
        "{r}"
    );
    block_on(async {
        let (mut ws, w) = ws_bearer(s.addr, &token("x", 0, 600, |_| {})).await;
        assert_eq!(w["type"], "welcome");
        send(&mut ws, json!({"type":"subscribe","channel":"ops"})).await;
        let e = recv(&mut ws).await;
        assert_eq!(e["code"], "broker_unavailable", "{e}");
    });
}

#[test]
fn reuse_port_lets_two_nodes_share_one_port() {
    let first = Server::start(&["--reuse-port"]);
    let listen = first.addr.to_string();
    let second = Server::start_at(&listen, &["--reuse-port"], &[("TESSERA_SECRET", KEY)]);
    assert_eq!(first.addr, second.addr);
    for _ in 0..4 {
        assert_eq!(status(&http(first.addr, "GET", "/healthz", &[], "")), 200);
    }
}

/// The access and refresh tokens of a 200 from login or refresh.
fn tokens(r: &str) -> (String, String) {
    assert_eq!(status(r), 200, "{r}");
    let b = body(r);
    (
        b["access_token"].as_str().unwrap().to_string(),
        b["refresh_token"].as_str().unwrap().to_string(),
    )
}

fn error_of(r: &str) -> (u16, Option<String>) {
    (status(r), body(r)["error"].as_str().map(String::from))
}

/// The README's least-privilege Redis user (ACL `~P:* &P:pub`, here with
/// prefix `t`) is all a cluster needs: publish and fan-out across nodes,
/// history, sessions, revocation and security events; its password comes
/// from `TESSERA_REDIS_PASSWORD`, not the flag.
#[test]
fn spec12_a_redis_user_limited_to_the_prefix_and_env_password_is_enough() {
    let Some(redis) = Redis::start_with(
        "spec12_a_redis_user_limited_to_the_prefix_and_env_password_is_enough",
        &[
            "--user",
            "default",
            "off",
            "--user",
            "lim",
            "on",
            ">Lim1tedPw",
            "~t:*",
            "&t:pub",
            "+@all",
        ],
    ) else {
        return;
    };
    let (_dir, users, _) = users_file("acl");
    let url = format!("redis://lim@127.0.0.1:{}", redis.port);
    let start = |id: &str| {
        let args = [
            "--redis",
            &url,
            "--node-id",
            id,
            "--redis-prefix",
            "t",
            "--users",
            &users,
        ];
        let s = Server::launch().env("TESSERA_REDIS_PASSWORD", "Lim1tedPw").start(&args);
        s.wait_log(&["broker_up", id]);
        s
    };
    let (a, b) = (start("a"), start("b"));
    // Without the variable, a user without a password is a usage error.
    let out = tessera_command()
        .args(["serve", "--redis", &url, "--listen", "127.0.0.1:0"])
        .env("TESSERA_SECRET", KEY)
        .env_remove("TESSERA_REDIS_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let (access, refresh_token) = tokens(&login(&a, "agent-7", None));
    block_on(async {
        let (mut ws, _) = ws_bearer(b.addr, &access).await;
        subscribe(&mut ws, "ops", None).await;
        for n in 1..=3 {
            assert_eq!(status(&publish(&a, "ops", n)), 202);
        }
        assert_eq!(numbers(&mut ws, "ops", 3).await, vec![1, 2, 3]);
        // History from Redis on the other node.
        let (mut late, _) = ws_bearer(a.addr, &hq()).await;
        let r = subscribe(&mut late, "ops", Some(json!({"last": 3}))).await;
        assert_eq!(r["recovered"], true, "{r}");
        assert_eq!(numbers(&mut late, "ops", 3).await, vec![1, 2, 3]);
    });
    // The session made on A rotates on B; the old token's reuse revokes it.
    let next = refresh(&b, &refresh_token);
    assert_eq!(status(&next), 200, "{next}");
    assert_eq!(error_of(&refresh(&a, &refresh_token)).0, 401);
    for s in [&a, &b] {
        let logs = s.logs();
        assert!(!logs.contains("NOPERM") && !logs.contains("broker_down"), "{logs}");
        assert!(!logs.contains("Lim1tedPw"), "{logs}");
    }
}

#[test]
fn spec12_a_session_made_on_one_node_refreshes_on_any_other() {
    let Some(cluster) = Cluster::three("refresh_anywhere", &[]) else {
        return;
    };
    let ([a, b, c], redis) = (&cluster.nodes, &cluster.redis);
    let (_, r1) = tokens(&login(a, "agent-7", None));
    let (access2, r2) = tokens(&refresh(b, &r1));
    block_on(async {
        // The new access token works on a third node, names the same
        // session and keeps the login's amr.
        let (mut ws, w) = ws_bearer(c.addr, &access2).await;
        assert_eq!(w["type"], "welcome", "{w}");
        send(&mut ws, json!({"type":"ping"})).await;
        assert_eq!(recv(&mut ws).await["type"], "pong");
    });
    // And the new refresh token rotates on C, then on A.
    let (_, r3) = tokens(&refresh(c, &r2));
    let (_, r4) = tokens(&refresh(a, &r3));
    assert_ne!(r4, r3);
    // Redis holds the session by its sid, and only digests of its tokens.
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "--scan", "--pattern", "t:*"])
        .output()
        .unwrap();
    let keys = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(keys.contains("t:s:") && keys.contains("t:us:"), "{keys}");
    let dump = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "--no-raw"])
        .args(["EVAL", "local o = {} for _, k in ipairs(redis.call('KEYS', 't:s:*')) do for _, v in ipairs(redis.call('HGETALL', k)) do o[#o+1] = v end end return o", "0"])
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout).to_string();
    assert!(dump.contains("agent-7"), "{dump}");
    for t in [&r1, &r2, &r3, &r4] {
        assert!(!dump.contains(t.as_str()), "a raw refresh token in Redis: {dump}");
    }
    // Garbage is refused without a session.
    assert_eq!(
        error_of(&refresh(b, "not-a-token")),
        (401, Some("invalid_refresh_token".into()))
    );
}

#[test]
fn spec12_refresh_rotated_on_a_and_reused_on_b_revokes_the_session_and_closes_its_socket_on_c_with_4003() {
    let Some(cluster) = Cluster::three("reuse", &[]) else {
        return;
    };
    let [a, b, c] = &cluster.nodes;
    let (access1, r1) = tokens(&login(a, "agent-7", None));
    block_on(async {
        let (mut on_c, _) = ws_bearer(c.addr, &access1).await;
        let (mut other, _) = ws_bearer(c.addr, &token("someone", 0, 600, |_| {})).await;
        // Rotated on A ...
        let (access2, r2) = tokens(&refresh(a, &r1));
        let (mut on_a, _) = ws_bearer(a.addr, &access2).await;
        // ... and the old token reused on B: the session dies everywhere.
        let r = refresh(b, &r1);
        assert_eq!(error_of(&r), (401, Some("refresh_token_reused".into())), "{r}");
        assert_eq!(close_code(&mut on_c, Duration::from_secs(1)).await, Some(4003));
        assert_eq!(close_code(&mut on_a, Duration::from_secs(1)).await, Some(4003));
        b.wait_log(&["refresh_reused"]);
        send(&mut other, json!({"type":"ping"})).await;
        assert_eq!(recv(&mut other).await["type"], "pong");
        // The current token is dead too, on every node, and so are the
        // session's access tokens.
        for n in [&a, &b, &c] {
            let r = refresh(n, &r2);
            assert_eq!(error_of(&r), (401, Some("invalid_refresh_token".into())), "{r}");
            for t in [&access1, &access2] {
                let up = ws_connect(n.addr, &[("Authorization", &format!("Bearer {t}"))]).await;
                assert!(up.is_err(), "a revoked session's token opened a socket");
            }
        }
    });
}

#[test]
fn spec12_logout_on_b_of_a_session_made_on_a() {
    let Some(redis) = Redis::start("spec12_logout_on_b_of_a_session_made_on_a") else {
        return;
    };
    let (_dir, users, _) = users_file("logout_refresh");
    let a = node(&redis, "a", &["--users", &users]);
    let b = node(&redis, "b", &["--users", &users]);
    let (access, r1) = tokens(&login(&a, "agent-7", None));
    let logout = |s: &Server, t: &str| {
        http(
            s.addr,
            "POST",
            "/auth/logout",
            &[("Content-Type", "application/json")],
            &json!({"refresh_token": t}).to_string(),
        )
    };
    block_on(async {
        let (mut on_a, _) = ws_bearer(a.addr, &access).await;
        // By the refresh token, on the node that did not make the session.
        let r = logout(&b, &r1);
        assert_eq!(status(&r), 204, "{r}");
        assert_eq!(close_code(&mut on_a, Duration::from_secs(1)).await, Some(4003));
        // At once refused on B itself.
        let up = ws_connect(b.addr, &[("Authorization", &format!("Bearer {access}"))]).await;
        assert!(up.is_err(), "a logged-out session's token opened a socket");
    });
    let r = refresh(&a, &r1);
    assert_eq!(error_of(&r), (401, Some("invalid_refresh_token".into())), "{r}");
    // A well-formed token of no session is refused, like on one node.
    let unknown = "A".repeat(43);
    assert_eq!(error_of(&logout(&b, &unknown)), (401, Some("invalid_token".into())));
}

#[test]
fn spec12_refresh_while_redis_is_down_is_503_and_works_again_after() {
    let dir = scratch_dir("cluster", "aof");
    let dir_s = dir.to_str().unwrap().to_string();
    // AOF with fsync on every write: a SIGKILL loses no session.
    let Some(mut redis) = Redis::start_with(
        "spec12_refresh_while_redis_is_down_is_503_and_works_again_after",
        &["--appendonly", "yes", "--appendfsync", "always", "--dir", &dir_s],
    ) else {
        return;
    };
    let (_dir, users, _) = users_file("refresh_down");
    let a = node(&redis, "a", &["--users", &users]);
    let b = node(&redis, "b", &["--users", &users]);
    let (access, r1) = tokens(&login(&a, "agent-7", None));
    redis.kill();
    b.wait_log(&["broker_down", "\"b\""]);
    let r = refresh(&b, &r1);
    assert_eq!(error_of(&r), (503, Some("state_unavailable".into())), "{r}");
    assert_eq!(header(&r, "Retry-After"), Some("1"), "{r}");
    // Valid tokens still connect while Redis is away.
    block_on(async {
        let (_ws, w) = ws_bearer(b.addr, &access).await;
        assert_eq!(w["type"], "welcome", "{w}");
    });
    redis.launch();
    let until = Instant::now() + Duration::from_secs(15);
    while b.logs().lines().filter(|l| l.contains("broker_up")).count() < 2 {
        assert!(Instant::now() < until, "b did not reconnect:\n{}", b.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The token the 503 did not consume still rotates, on B.
    let (_, r2) = tokens(&refresh(&b, &r1));
    assert_eq!(status(&refresh(&a, &r2)), 200);
}

/// The login script on its own, three logins of one user in the same
/// millisecond (as on two nodes whose clocks tie), two kept: the first one
/// goes. The sids sort against the login order, so ordering a tie by sid
/// (what Redis does with equal scores) would evict the second.
#[test]
fn spec12_logins_in_the_same_millisecond_evict_the_oldest() {
    let Some(redis) = Redis::start("spec12_logins_in_the_same_millisecond_evict_the_oldest") else {
        return;
    };
    let script = tessera::broker::redis::sessions::login_script();
    let login = |sid: &str| {
        let out = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "EVAL", &script, "4"])
            .args([&format!("t:s:{sid}"), "t:us:agent", "t:rev", "t:bc"])
            .args([sid, "agent", "pwd", "digest", "4000000000", "4000000000", "4000000000"])
            .args(["1700000000000", "2", "t:s:", "4000000000", "1700000000"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(login("s-c"), "");
    assert_eq!(login("s-b"), "");
    assert_eq!(login("s-a"), "s-c", "the least recently used session goes");
    assert_eq!(login("s-0"), "s-b");
}

#[test]
fn spec12_max_sessions_per_user_evicts_across_nodes() {
    let Some(redis) = Redis::start("spec12_max_sessions_per_user_evicts_across_nodes") else {
        return;
    };
    let (_dir, users, _) = users_file("evict");
    let flags = ["--users", users.as_str(), "--max-sessions-per-user", "2"];
    let a = node(&redis, "a", &flags);
    let b = node(&redis, "b", &flags);
    let (oldest, r_oldest) = tokens(&login(&a, "agent-7", None));
    let (second, _) = tokens(&login(&b, "agent-7", None));
    block_on(async {
        let (mut ws_oldest, _) = ws_bearer(a.addr, &oldest).await;
        let (mut ws_second, _) = ws_bearer(a.addr, &second).await;
        // A third login, on B: the least recently used session (made on A) goes.
        let (third, _) = tokens(&login(&b, "agent-7", None));
        assert_eq!(close_code(&mut ws_oldest, Duration::from_secs(1)).await, Some(4003));
        b.wait_log(&["session_evicted"]);
        send(&mut ws_second, json!({"type":"ping"})).await;
        assert_eq!(recv(&mut ws_second).await["type"], "pong");
        let (_ws, w) = ws_bearer(a.addr, &third).await;
        assert_eq!(w["type"], "welcome", "{w}");
    });
    let r = refresh(&a, &r_oldest);
    assert_eq!(error_of(&r), (401, Some("invalid_refresh_token".into())), "{r}");
}

/// The status of a WebSocket upgrade with `token` (the head only: a 101
/// is not waited on).
fn upgrade_status(addr: std::net::SocketAddr, token: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&upgrade("/ws", &format!("Authorization: Bearer {token}\r\n")))
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).is_ok_and(|n| n == 1) {
        head.push(b[0]);
    }
    status(&String::from_utf8_lossy(&head))
}

#[test]
fn spec12_failed_handshakes_count_across_nodes() {
    let Some(cluster) = Cluster::three("handshakes", &[]) else {
        return;
    };
    let nodes = &cluster.nodes;
    let good = token("field", 0, 600, |_| {});
    let bad = format!("{good}x");
    // 4 + 4 + 1 refused upgrades: no node reaches the limit of 10 itself,
    // nor the cluster.
    for (n, times) in [(0, 4), (1, 4), (2, 1)] {
        for _ in 0..times {
            assert_eq!(upgrade_status(nodes[n].addr, &bad), 401);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    for n in nodes {
        assert_eq!(upgrade_status(n.addr, &good), 101, "the 9th failure must not block");
    }
    // The 10th, on B, blocks the address on every node, for a good token
    // too, and for logins.
    assert_eq!(upgrade_status(nodes[1].addr, &bad), 401);
    for n in nodes {
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            let s = upgrade_status(n.addr, &good);
            if s == 429 {
                break;
            }
            assert_eq!(s, 101);
            assert!(Instant::now() < until, "no block on {}", n.addr);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    nodes[1].wait_log(&["ip_throttled"]);
    let r = login(&nodes[0], "agent-7", None);
    assert_eq!(error_of(&r), (429, Some("too_many_attempts".into())), "{r}");
}

#[test]
fn spec13_security_events_of_every_node_reach_an_operator_on_any_node() {
    let Some(redis) = Redis::start("spec13_security_events_of_every_node_reach_an_operator_on_any_node") else {
        return;
    };
    let (_dir, users, _) = users_file("events");
    let flags = ["--users", users.as_str(), "--admin-min-clearance", "5"];
    let a = node(&redis, "a", &flags);
    let b = node(&redis, "b", &flags);
    let op = token("op", 9, 600, |_| {});
    block_on(async {
        let (mut ws, _) = ws_bearer(a.addr, &op).await;
        subscribe(&mut ws, "$security", None).await;
        // A failed login on B ...
        let r = http(
            b.addr,
            "POST",
            "/auth/login",
            &[("Content-Type", "application/json")],
            &json!({"username":"agent-7","password":"nope"}).to_string(),
        );
        assert_eq!(status(&r), 401, "{r}");
        // ... is live on A's `$security`, naming B ...
        let m = recv(&mut ws).await;
        assert_eq!(m["channel"], "$security", "{m}");
        let e = &m["data"];
        assert_eq!(
            (
                e["event"].as_str(),
                e["reason"].as_str(),
                e["sub"].as_str(),
                e["node"].as_str()
            ),
            (Some("login_failed"), Some("wrong_password"), Some("agent-7"), Some("b")),
            "{m}"
        );
        // ... and one of A's own comes after it, with the next id.
        let bad = format!("{op}x");
        assert_eq!(upgrade_status(a.addr, &bad), 401);
        let m2 = recv(&mut ws).await;
        assert_eq!(
            (m2["data"]["event"].as_str(), m2["data"]["node"].as_str()),
            (Some("ws_reject"), Some("a")),
            "{m2}"
        );
        assert_eq!(m2["data"]["id"].as_u64(), e["id"].as_u64().map(|i| i + 1), "{m2}");
    });
    // A's /admin/events has both, ids counting up, and says whose ids they are.
    let r = http(
        a.addr,
        "GET",
        "/admin/events",
        &[("Authorization", &format!("Bearer {op}"))],
        "",
    );
    assert_eq!(status(&r), 200, "{r}");
    let v = body(&r);
    assert_eq!(v["node"], "a", "{v}");
    let events = v["events"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["node"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, [("login_failed", "b"), ("ws_reject", "a")], "{v}");
    assert!(events[0]["id"].as_u64() < events[1]["id"].as_u64(), "{v}");
    // B has its own event once (its own broadcast is not recorded twice),
    // then A's.
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let r = http(
            b.addr,
            "GET",
            "/admin/events",
            &[("Authorization", &format!("Bearer {op}"))],
            "",
        );
        let v = body(&r);
        let on_b: Vec<&str> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        if on_b.len() == 2 {
            assert_eq!(on_b, ["login_failed", "ws_reject"], "{v}");
            break;
        }
        assert_eq!(on_b, ["login_failed"], "{v}");
        assert!(Instant::now() < until, "A's event never reached B: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn spec13_admin_revoke_on_one_node_reaches_sessions_made_on_another() {
    let Some(redis) = Redis::start("spec13_admin_revoke_on_one_node_reaches_sessions_made_on_another") else {
        return;
    };
    let (_dir, users, _) = users_file("admin_revoke");
    let flags = ["--users", users.as_str(), "--admin-min-clearance", "5"];
    let a = node(&redis, "a", &flags);
    let b = node(&redis, "b", &flags);
    let op = token("op", 9, 600, |_| {});
    let revoke = |s: &Server, body: Value| {
        http(
            s.addr,
            "POST",
            "/admin/revoke",
            &[
                ("Authorization", &format!("Bearer {op}")),
                ("Content-Type", "application/json"),
            ],
            &body.to_string(),
        )
    };
    let admin_get = |s: &Server, path: &str| {
        body(&http(
            s.addr,
            "GET",
            path,
            &[("Authorization", &format!("Bearer {op}"))],
            "",
        ))
    };
    let (access1, r1) = tokens(&login(&a, "agent-7", None));
    let (access2, r2) = tokens(&login(&a, "agent-7", None));
    block_on(async {
        let (mut on_a, _) = ws_bearer(a.addr, &access1).await;
        let (mut on_b, _) = ws_bearer(b.addr, &access1).await;
        // By sid, on B: the session made on A counts, and B's socket of it.
        let sid = admin_get(&a, "/admin/connections")["connections"][0]["sid"]
            .as_str()
            .unwrap()
            .to_string();
        let r = revoke(&b, json!({ "sid": sid }));
        assert_eq!(status(&r), 200, "{r}");
        assert_eq!(
            (body(&r)["revoked"].as_u64(), body(&r)["closed"].as_u64()),
            (Some(1), Some(1)),
            "{r}"
        );
        assert_eq!(close_code(&mut on_a, Duration::from_secs(1)).await, Some(4003));
        assert_eq!(close_code(&mut on_b, Duration::from_secs(1)).await, Some(4003));
        // B's security event names the user, whose session only Redis knew.
        let events = admin_get(&b, "/admin/events");
        let revoked: Vec<&Value> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "revoked")
            .collect();
        assert!(!revoked.is_empty(), "{events}");
        for e in revoked {
            assert_eq!((&e["sub"], &e["by"]), (&json!("agent-7"), &json!("op")), "{events}");
        }
        // By sub, on B: the other session made on A.
        let (mut second, _) = ws_bearer(a.addr, &access2).await;
        let r = revoke(&b, json!({"sub": "agent-7"}));
        assert_eq!(body(&r)["revoked"].as_u64(), Some(1), "{r}");
        assert_eq!(close_code(&mut second, Duration::from_secs(1)).await, Some(4003));
    });
    for t in [&r1, &r2] {
        assert_eq!(error_of(&refresh(&a, t)), (401, Some("invalid_refresh_token".into())));
    }
}
