//! `cargo bench --bench jwt`: tessera's `verify` of a typical ~200-byte
//! token, against the floor (bare HMAC-SHA256 over the same signing input,
//! with a pre-keyed state as tessera uses) and the Rust peer (the
//! `jsonwebtoken` crate's `decode` with the same checks).

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tessera::jwt::{self, Claims, VerifyOptions};
use tessera::keys::KeySet;

const KEY: &str = "bench-key-0123456789abcdefghijklmnopqrstuv";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(now: u64) -> String {
    let keys = KeySet::single(KEY.as_bytes()).unwrap();
    let claims = Claims {
        sub: "agent-007".into(),
        exp: (now + 3600) as f64,
        iat: Some(now as f64),
        iss: Some("tessera".into()),
        clearance: 2,
        channels: Some(vec!["ops".into(), "briefing".into()]),
        sid: Some("c2Vzc2lvbi1pZC0xMjM0NTY".into()),
        ..Claims::default()
    };
    jwt::sign(&claims, &keys, None).unwrap()
}

fn bench(c: &mut Criterion) {
    let now = now();
    let t = token(now);
    eprintln!("token: {} bytes", t.len());
    let keys = KeySet::single(KEY.as_bytes()).unwrap();
    let opts = VerifyOptions {
        leeway: 30,
        issuer: Some("tessera".into()),
        audience: None,
    };
    let mut g = c.benchmark_group("verify");

    g.bench_function("tessera_verify", |b| {
        b.iter(|| jwt::verify(black_box(&t), &keys, &opts, now).unwrap())
    });

    let (input, _) = t.rsplit_once('.').unwrap();
    let prekeyed = <Hmac<Sha256> as KeyInit>::new_from_slice(KEY.as_bytes()).unwrap();
    g.bench_function("floor_hmac_sha256", |b| {
        b.iter(|| {
            let mut m = prekeyed.clone();
            m.update(black_box(input.as_bytes()));
            m.finalize().into_bytes()
        })
    });

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Peer {
        sub: String,
        exp: u64,
        clearance: Option<u32>,
        channels: Option<Vec<String>>,
    }
    let dk = jsonwebtoken::DecodingKey::from_secret(KEY.as_bytes());
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.leeway = 30;
    v.set_issuer(&["tessera"]);
    g.bench_function("jsonwebtoken_decode", |b| {
        b.iter(|| jsonwebtoken::decode::<Peer>(black_box(&t), &dk, &v).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
