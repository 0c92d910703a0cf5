//! `cargo bench --features cluster --bench cluster_latency`: what Redis adds to a
//! delivery (SPEC §12, issue 13). Starts its own `redis-server` (loopback,
//! no persistence, free port) and `tessera serve` nodes, then, for each
//! setup, one subscriber and one publisher (WebSocket): the publisher sends
//! `RATE` messages a second for `SECS` seconds, each carrying its send time;
//! the subscriber notes when each arrives. Setups: one node without Redis
//! (the local engine), a cluster node publishing to a subscriber on the same
//! node, and publisher on node A, subscriber on node B. Also counts Redis
//! commands per publish (`CONFIG RESETSTAT` / `INFO commandstats`) over the
//! cross-node run. Bounded (every wait has a deadline) and self-stopping:
//! the nodes and Redis are killed by PID at the end.
//!
//! Env: `RATE` [1000], `SECS` [5], `TESSERA_BIN` [the bench profile's
//! `tessera`]. Prints one line per setup (p50, p99, max, lost) and the
//! Redis commands per publish.

#[cfg(not(feature = "cluster"))]
fn main() {
    eprintln!("cluster bench: build with --features cluster");
}

#[cfg(feature = "cluster")]
fn main() {
    bench::run();
}

#[cfg(feature = "cluster")]
mod bench {
    use async_tungstenite::tungstenite::Message;
    use async_tungstenite::tungstenite::client::IntoClientRequest;
    use futures_util::StreamExt;
    use std::net::SocketAddr;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};
    use tessera::jwt::{self, Claims};
    use tessera::keys::KeySet;

    const KEY: &str = "bench-key-0123456789abcdefghijklmnopqrstuvwxyz";

    fn env_num(name: &str, default: u64) -> u64 {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    struct Killed(Vec<Child>);
    impl Drop for Killed {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn redis_cli(port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `/healthz` says `"broker":"up"` (within 10 s).
    fn wait_up(addr: SocketAddr) {
        use std::io::{Read, Write};
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.contains("\"broker\":\"up\"") {
                return;
            }
            assert!(Instant::now() < until, "node {addr} not up: {out}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn token(sub: &str, publish: bool) -> String {
        let claims = Claims {
            sub: sub.into(),
            exp: 4_102_444_800.0,
            publish,
            clearance: 5,
            ..Claims::default()
        };
        jwt::sign(&claims, &KeySet::single(KEY.as_bytes()).unwrap(), None).unwrap()
    }

    type Ws = async_tungstenite::WebSocketStream<smol::net::TcpStream>;

    async fn connect(addr: SocketAddr, token: &str) -> Ws {
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let tcp = smol::net::TcpStream::connect(addr).await.unwrap();
        let (mut ws, _) = async_tungstenite::client_async(req, tcp).await.unwrap();
        let welcome = next_json(&mut ws).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        ws
    }

    async fn next_json(ws: &mut Ws) -> serde_json::Value {
        let m = smol::future::or(async { ws.next().await }, async {
            smol::Timer::after(Duration::from_secs(10)).await;
            None
        })
        .await;
        match m {
            Some(Ok(Message::Text(t))) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// One run: percentiles of delivery latency (µs) and how many arrived.
    fn latency(label: &str, publisher: SocketAddr, subscriber: SocketAddr, rate: u64, secs: u64) {
        let n = rate * secs;
        let t0 = Instant::now();
        let (mut lat, got) = smol::block_on(async {
            let mut sub = connect(subscriber, &token("lat-sub", false)).await;
            sub.send(Message::text(r#"{"type":"subscribe","channel":"lat"}"#))
                .await
                .unwrap();
            let r = next_json(&mut sub).await;
            assert_eq!(r["type"], "subscribed", "{r}");
            let publ = connect(publisher, &token("lat-pub", true)).await;
            let (mut tx, mut rx) = publ.split();
            let send = async {
                let start = Instant::now();
                for i in 0..n {
                    smol::Timer::at(start + Duration::from_micros(i * 1_000_000 / rate)).await;
                    let t = t0.elapsed().as_nanos() as u64;
                    let msg = format!(r#"{{"type":"publish","channel":"lat","data":{{"t":{t}}}}}"#);
                    tx.send(Message::text(msg)).await.unwrap();
                }
            };
            // Acks are read (and dropped) so the publisher's socket never backs up.
            let acks = async {
                let mut seen = 0;
                while seen < n {
                    match rx.next().await {
                        Some(Ok(_)) => seen += 1,
                        _ => break,
                    }
                }
            };
            let recv = async {
                let mut lat = Vec::with_capacity(n as usize);
                let deadline = Instant::now() + Duration::from_secs(secs + 10);
                while (lat.len() as u64) < n {
                    let m = smol::future::or(async { sub.next().await.map(Some) }, async {
                        smol::Timer::at(deadline).await;
                        Some(None)
                    })
                    .await;
                    let Some(Some(Ok(Message::Text(t)))) = m else { break };
                    let now = t0.elapsed().as_nanos() as u64;
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    if let Some(t) = v["data"]["t"].as_u64() {
                        lat.push(now.saturating_sub(t) / 1000);
                    }
                }
                lat
            };
            let (_, (_, lat)) = futures_util::future::join(send, futures_util::future::join(acks, recv)).await;
            let got = lat.len() as u64;
            (lat, got)
        });
        lat.sort_unstable();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        println!(
            "{label}: {rate} msg/s for {secs} s: p50 {} µs, p99 {} µs, max {} µs, lost {}",
            pct(0.50),
            pct(0.99),
            lat.last().copied().unwrap_or(0),
            n - got
        );
    }

    /// Starts a node: `TESSERA_BIN` when set (e.g. the release build, with
    /// this bench built in the dev profile), else the bench profile's own.
    fn node(extra: &[&str]) -> (Child, SocketAddr) {
        use std::io::BufRead;
        let bin = std::env::var("TESSERA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tessera").to_string());
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--max-commands-per-sec", "100000"])
            .args(extra)
            .env("TESSERA_SECRET", KEY)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("tessera serve");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr: SocketAddr = loop {
            let l = lines.next().expect("the node's log").unwrap();
            if l.contains("\"listening\"") {
                let v: serde_json::Value = serde_json::from_str(&l).unwrap();
                break v["addr"].as_str().unwrap().parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        (child, addr)
    }

    pub fn run() {
        let rate = env_num("RATE", 1000).clamp(1, 100_000);
        let secs = env_num("SECS", 5).clamp(1, 60);
        let rport = free_port();
        let redis = Command::new("redis-server")
            .args(["--port", &rport.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let mut procs = Killed(vec![redis]);
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", rport)).is_err() {
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let url = format!("redis://127.0.0.1:{rport}");

        let (local, local_addr) = node(&[]);
        procs.0.push(local);
        latency("local engine, same node", local_addr, local_addr, rate, secs);

        let (a, a_addr) = node(&["--redis", &url, "--node-id", "a"]);
        procs.0.push(a);
        let (b, b_addr) = node(&["--redis", &url, "--node-id", "b"]);
        procs.0.push(b);
        wait_up(a_addr);
        wait_up(b_addr);
        latency("cluster, same node (A -> A)", a_addr, a_addr, rate, secs);
        let _ = redis_cli(rport, &["CONFIG", "RESETSTAT"]);
        latency("cluster, cross-node (A -> B)", a_addr, b_addr, rate, secs);
        let stats = redis_cli(rport, &["INFO", "commandstats"]);
        let n = rate * secs;
        let mut total = 0u64;
        for line in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
            let name = line.split(':').next().unwrap_or("");
            let calls: u64 = line
                .split([':', ','])
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let usec: f64 = line
                .split([':', ','])
                .find_map(|kv| kv.strip_prefix("usec_per_call="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            // Commands run inside scripts are counted too; `evalsha` is
            // what crossed the network.
            println!("  {name}: {calls} calls ({usec} µs per call)");
            if name == "cmdstat_evalsha" {
                total += calls;
            }
        }
        println!(
            "round trips per publish (EVALSHA per message over {n} publishes): {:.3}",
            total as f64 / n as f64
        );
    }
}
