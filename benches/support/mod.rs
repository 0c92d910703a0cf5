//! What the load benches share: starting the real server.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// Starts `tessera serve --listen 127.0.0.1:0 ARGS…` with `TESSERA_SECRET=key`,
/// waits for its `listening` line and returns it with its address. With
/// `pin`, the server runs on CPU 0 and this process moves to CPU 1.
pub fn start_server(args: &[&str], key: &str, pin: bool) -> (Child, SocketAddr) {
    let bin = env!("CARGO_BIN_EXE_tessera");
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", bin]);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(args);
    let mut child = cmd
        .env("TESSERA_SECRET", key)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let l = lines.next().unwrap().unwrap();
        if l.contains("\"listening\"") {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            break v["addr"].as_str().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    if pin {
        pin_self("1");
    }
    (child, addr)
}

/// Whether `taskset` is there to pin the server and the load apart.
pub fn can_pin() -> bool {
    Command::new("taskset").arg("--version").output().is_ok()
}

/// Moves this process to the given CPUs (`taskset -p -c CPUS`).
pub fn pin_self(cpus: &str) {
    let _ = Command::new("taskset")
        .args(["-p", "-c", cpus, &std::process::id().to_string()])
        .output();
}
