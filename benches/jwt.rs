//! `cargo bench --bench jwt`: tessera's `verify` of a typical ~200-byte
//! token, against the floor (bare HMAC-SHA256 over the same signing input,
//! with a pre-keyed state as tessera uses) and the Rust peer (the
//! `jsonwebtoken` crate's `decode` with the same checks).
//!
//! Wall-clock figures on a shared machine are noisy, so the same three
//! loops can be counted in instructions instead, with no criterion around
//! them (see BENCHMARKS.md):
//!
//! ```text
//! cargo bench --bench jwt --no-run
//! JWT_BENCH_LOOPS=10000 valgrind --tool=callgrind --collect-atstart=no \
//!     --toggle-collect='jwt::loop_*' target/release/deps/jwt-<hash>
//! callgrind_annotate --inclusive=yes callgrind.out.<pid> | grep loop_
//! ```

use criterion::{Criterion, black_box, criterion_group};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tessera::jwt::{self, Claims, VerifyOptions};
use tessera::keys::KeySet;

const KEY: &str = "bench-key-0123456789abcdefghijklmnopqrstuv";
const LEEWAY: u64 = 30;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What a login issues in the common case: `sub`, `exp`, `iat`,
/// `clearance` and the session id (about 210 bytes in all).
fn token(now: u64) -> String {
    let keys = KeySet::single(KEY.as_bytes()).unwrap();
    let claims = Claims {
        sub: "agent-007".into(),
        exp: (now + 3600) as f64,
        iat: Some(now as f64),
        clearance: 2,
        sid: Some("c2Vzc2lvbi1pZC0xMjM0NTY".into()),
        ..Claims::default()
    };
    jwt::sign(&claims, &keys, None).unwrap()
}

/// The same claims, as the peer library deserializes them.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Peer {
    sub: String,
    exp: u64,
    iat: Option<u64>,
    clearance: Option<u32>,
    sid: Option<String>,
}

/// The three contenders, each prepared once.
struct Setup {
    now: u64,
    token: String,
    keys: KeySet,
    opts: VerifyOptions,
    prekeyed: Hmac<Sha256>,
    peer_key: jsonwebtoken::DecodingKey,
    peer_validation: jsonwebtoken::Validation,
}

impl Setup {
    fn new() -> Setup {
        let now = now();
        let mut peer_validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        peer_validation.leeway = LEEWAY;
        Setup {
            now,
            token: token(now),
            keys: KeySet::single(KEY.as_bytes()).unwrap(),
            opts: VerifyOptions {
                leeway: LEEWAY,
                ..VerifyOptions::default()
            },
            prekeyed: <Hmac<Sha256> as KeyInit>::new_from_slice(KEY.as_bytes()).unwrap(),
            peer_key: jsonwebtoken::DecodingKey::from_secret(KEY.as_bytes()),
            peer_validation,
        }
    }

    fn signing_input(&self) -> &str {
        self.token.rsplit_once('.').unwrap().0
    }

    fn tessera(&self) -> jwt::VerifiedClaims {
        jwt::verify(black_box(&self.token), &self.keys, &self.opts, self.now).unwrap()
    }

    fn floor(&self, input: &str) -> [u8; 32] {
        let mut m = self.prekeyed.clone();
        m.update(black_box(input.as_bytes()));
        m.finalize().into_bytes().into()
    }

    fn peer(&self) -> jsonwebtoken::TokenData<Peer> {
        jsonwebtoken::decode::<Peer>(black_box(&self.token), &self.peer_key, &self.peer_validation).unwrap()
    }
}

fn bench(c: &mut Criterion) {
    let s = Setup::new();
    eprintln!("token: {} bytes", s.token.len());
    let input = s.signing_input();
    let mut g = c.benchmark_group("verify");
    g.bench_function("tessera_verify", |b| b.iter(|| s.tessera()));
    g.bench_function("floor_hmac_sha256", |b| b.iter(|| s.floor(input)));
    g.bench_function("jsonwebtoken_decode", |b| b.iter(|| s.peer()));
    g.finish();
}

#[inline(never)]
fn loop_tessera(s: &Setup, n: u64) {
    for _ in 0..n {
        black_box(s.tessera());
    }
}

#[inline(never)]
fn loop_floor(s: &Setup, n: u64) {
    let input = s.signing_input();
    for _ in 0..n {
        black_box(s.floor(input));
    }
}

#[inline(never)]
fn loop_jsonwebtoken(s: &Setup, n: u64) {
    for _ in 0..n {
        black_box(s.peer());
    }
}

/// The best time per iteration over `rounds` rounds of 2 000 iterations
/// (about a millisecond, shorter than a scheduler time slice), the three
/// loops interleaved: on a busy machine the minimum is the figure least
/// disturbed by other processes.
fn best_of(s: &Setup, rounds: u32) {
    const N: u64 = 2_000;
    type Loop = fn(&Setup, u64);
    let loops: [(&str, Loop); 3] = [
        ("tessera_verify", loop_tessera),
        ("floor_hmac_sha256", loop_floor),
        ("jsonwebtoken_decode", loop_jsonwebtoken),
    ];
    let mut best = [f64::INFINITY; 3];
    for _ in 0..rounds {
        for (b, (_, f)) in best.iter_mut().zip(loops) {
            let t = std::time::Instant::now();
            f(s, N);
            *b = b.min(t.elapsed().as_nanos() as f64 / N as f64);
        }
    }
    for ((name, _), b) in loops.iter().zip(best) {
        println!("{name:<22} {b:7.1} ns  ({:.2}x the floor)", b / best[1]);
    }
}

criterion_group!(benches, bench);

fn main() {
    // Instruction counting under callgrind: run each loop n times, nothing else.
    if let Some(n) = std::env::var("JWT_BENCH_LOOPS").ok().and_then(|v| v.parse().ok()) {
        let s = Setup::new();
        eprintln!("token: {} bytes, {n} iterations per loop", s.token.len());
        loop_tessera(&s, n);
        loop_floor(&s, n);
        loop_jsonwebtoken(&s, n);
        return;
    }
    if let Some(rounds) = std::env::var("JWT_BENCH_BEST_OF").ok().and_then(|v| v.parse().ok()) {
        let s = Setup::new();
        eprintln!("token: {} bytes, best of {rounds} rounds", s.token.len());
        best_of(&s, rounds);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
