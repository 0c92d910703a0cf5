//! `cargo bench --features tls --bench handshakes`: authenticated WebSocket
//! handshakes per second over ws:// and wss:// against the same server
//! (`tessera serve` with a self-signed certificate, pinned to CPU 0; this
//! client on CPU 1 when `taskset` exists). Each handshake is a fresh TCP
//! connection: (TLS handshake,) upgrade with a Bearer token, welcome, close.
//! Prints one line per scheme and the wss/ws ratio.

#[cfg(feature = "tls")]
mod support;

#[cfg(not(feature = "tls"))]
fn main() {
    eprintln!("handshakes bench: build with --features tls to compare ws and wss");
}

#[cfg(feature = "tls")]
fn main() {
    tls_bench::run();
}

#[cfg(feature = "tls")]
mod tls_bench {
    use async_tungstenite::tungstenite::client::IntoClientRequest;
    use futures_util::StreamExt;
    use std::time::{Duration, Instant};
    use tessera::jwt::{self, Claims};
    use tessera::keys::KeySet;

    const KEY: &str = "bench-key-0123456789abcdefghijklmnopqrstuvwxyz";
    const N: usize = 3000;
    const K: usize = 16;

    pub fn run() {
        let dir = std::env::temp_dir().join(format!("tessera-hs-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let pin = crate::support::can_pin();
        let results: Vec<(&str, f64)> = [("ws", false), ("wss", true)]
            .into_iter()
            .map(|(name, tls)| (name, bench(tls, &cert, &key, pin)))
            .collect();
        for (name, rate) in &results {
            println!("{name}: {rate:.0} handshakes/s (N={N}, K={K})");
        }
        println!("wss/ws ratio: {:.2}", results[1].1 / results[0].1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn bench(tls: bool, cert: &std::path::Path, key: &std::path::Path, pin: bool) -> f64 {
        let mut args = vec!["--max-connections", "10000", "--log-format", "json"];
        if tls {
            args.extend(["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
        }
        let (mut child, addr) = crate::support::start_server(&args, KEY, pin);
        let claims = Claims {
            sub: "bench".into(),
            exp: 4_102_444_800.0,
            ..Claims::default()
        };
        let token = jwt::sign(&claims, &KeySet::single(KEY.as_bytes()).unwrap(), None).unwrap();
        let connector = tessera::tls::connector(Some(cert)).unwrap();
        let ex = smol::LocalExecutor::new();
        let started = Instant::now();
        smol::block_on(ex.run(async {
            let next = std::rc::Rc::new(std::cell::Cell::new(0usize));
            let tasks: Vec<_> = (0..K)
                .map(|_| {
                    let (next, token, connector) = (next.clone(), token.clone(), connector.clone());
                    ex.spawn(async move {
                        while next.get() < N {
                            next.set(next.get() + 1);
                            one(addr, tls, &token, &connector).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
        }));
        let rate = N as f64 / started.elapsed().as_secs_f64();
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(200));
        rate
    }

    async fn one(addr: std::net::SocketAddr, tls: bool, token: &str, connector: &futures_rustls::TlsConnector) {
        let scheme = if tls { "wss" } else { "ws" };
        let mut req = format!("{scheme}://localhost:{}/ws", addr.port())
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let tcp = smol::net::TcpStream::connect(addr).await.unwrap();
        let stream = if tls {
            let name = tessera::tls::server_name("localhost").unwrap();
            tessera::tls::MaybeTls::Tls(Box::new(connector.connect(name, tcp).await.unwrap()))
        } else {
            tessera::tls::MaybeTls::Plain(tcp)
        };
        let (mut ws, _) = async_tungstenite::client_async(req, stream).await.unwrap();
        let welcome = ws.next().await.unwrap().unwrap();
        assert!(welcome.to_text().unwrap().contains("welcome"));
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    }
}
