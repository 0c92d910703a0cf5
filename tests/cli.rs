//! Black-box tests of `tessera keygen`, `token` and `verify` (SPEC §1–§3)
//! through the built binary: output, exit codes (0 ok, 1 rejected token,
//! 2 bad flags or unusable keys), and that no configured secret ever
//! appears in stdout or stderr, error cases included.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SECRET: &str = "cli-secret-Q2xpIHRlc3Qgc2VjcmV0IGtleSAxMjM0NTY3";
const K1: &str = "cli-k1-secret-aGVsbG8gd29ybGQgZnJvbSBrZXkgb25l";
const K2: &str = "cli-k2-secret-c2Vjb25kIGtleSBvZiB0aGUgY2xpIHRlc3Q";
/// 31 bytes: one short of RFC 7518 §3.2's minimum.
const SHORT: &str = "cli-short-secret-0123456789abcd";

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A scratch directory (removed on drop) and every secret put in it, which
/// no run may print.
struct Sandbox {
    dir: PathBuf,
    secrets: Vec<String>,
}

impl Sandbox {
    fn new(test: &str) -> Sandbox {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tessera-cli-{test}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Sandbox {
            dir,
            secrets: vec![SECRET.into(), K1.into(), K2.into(), SHORT.into()],
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a key file.
    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// Runs `tessera args` with `TESSERA_SECRET` set to `env` (else unset)
    /// and `stdin` as input, and checks that no secret leaked.
    fn run(&self, args: &[&str], env: Option<&str>, stdin: &[u8]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
        cmd.args(args)
            .current_dir(&self.dir)
            .env_remove("TESSERA_SECRET")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(s) = env {
            cmd.env("TESSERA_SECRET", s);
        }
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        // Written from a thread: a large input must not block on a full
        // pipe. The binary may stop reading early, so errors are expected.
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        for s in &self.secrets {
            assert!(
                !run.stdout.contains(s.as_str()),
                "secret on stdout of {args:?}: {run:?}"
            );
            assert!(
                !run.stderr.contains(s.as_str()),
                "secret on stderr of {args:?}: {run:?}"
            );
        }
        run
    }

    /// `tessera token … --secret-file key`, which must succeed.
    fn token(&self, key: &Path, args: &[&str]) -> String {
        let mut all = vec!["token", "--secret-file", key.to_str().unwrap()];
        all.extend_from_slice(args);
        let r = self.run(&all, None, b"");
        assert_eq!(r.code, 0, "{r:?}");
        let t = r.stdout.trim().to_string();
        assert_eq!(t.split('.').count(), 3, "{r:?}");
        t
    }

    /// `tessera verify --secret-file key …` with `token` on stdin.
    fn verify(&self, key: &Path, args: &[&str], token: &str) -> Run {
        let mut all = vec!["verify", "--secret-file", key.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run(&all, None, format!("{token}\n").as_bytes())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn claims(r: &Run) -> serde_json::Value {
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.lines().count(), 1, "one JSON object on one line: {r:?}");
    serde_json::from_str(&r.stdout).unwrap()
}

fn rejected(r: &Run, code: &str) {
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.stderr.trim(), format!("rejected: {code}"), "{r:?}");
    assert_eq!(r.stdout, "", "{r:?}");
}

/// Exit 2 with one line on stderr that contains `words`.
fn usage_error(r: &Run, words: &str) {
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(r.stdout, "", "{r:?}");
    assert!(r.stderr.contains(words), "{words:?} not in {r:?}");
}

// --- keygen -------------------------------------------------------------------------

#[test]
fn spec2_keygen_prints_43_base64url_chars() {
    let sb = Sandbox::new("keygen");
    let a = sb.run(&["keygen"], None, b"");
    let b = sb.run(&["keygen"], None, b"");
    for r in [&a, &b] {
        assert_eq!(r.code, 0, "{r:?}");
        let key = r.stdout.strip_suffix('\n').unwrap();
        assert_eq!(key.len(), 43, "{r:?}");
        assert!(
            key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{key}"
        );
    }
    assert_ne!(a.stdout, b.stdout);
    // The printed key works as TESSERA_SECRET.
    let key = a.stdout.trim();
    let t = sb.run(&["token", "--sub", "a"], Some(key), b"");
    assert_eq!(t.code, 0, "{t:?}");
    assert_eq!(claims(&sb.run(&["verify"], Some(key), t.stdout.as_bytes()))["sub"], "a");
}

#[test]
fn spec2_keygen_out_mode_0600_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let mut sb = Sandbox::new("keygen-out");
    let out = sb.path("signing.key");
    let r = sb.run(&["keygen", "--out", out.to_str().unwrap()], None, b"");
    assert_eq!(r.code, 0, "{r:?}");
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let key = std::fs::read_to_string(&out).unwrap();
    assert_eq!(key.trim().len(), 43);
    // From now on the written key must never be printed.
    sb.secrets.push(key.trim().to_string());

    let t = sb.token(&out, &["--sub", "from-file"]);
    assert_eq!(claims(&sb.verify(&out, &[], &t))["sub"], "from-file");

    let again = sb.run(&["keygen", "--out", out.to_str().unwrap()], None, b"");
    usage_error(&again, "--out");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), key, "an existing file is kept");

    let nowhere = sb.path("missing-dir/k");
    usage_error(
        &sb.run(&["keygen", "--out", nowhere.to_str().unwrap()], None, b""),
        "--out",
    );
}

// --- token → verify -----------------------------------------------------------------

#[test]
fn spec1_token_verify_round_trip() {
    let sb = Sandbox::new("round-trip");
    let key = sb.file("k", &format!("{SECRET}\n"));
    let t = sb.token(
        &key,
        &[
            "--sub",
            "agent-7",
            "--clearance",
            "3",
            "--channels",
            "ops,team.*",
            "--publish",
            "--ttl",
            "600",
        ],
    );
    let c = claims(&sb.verify(&key, &[], &t));
    assert_eq!(c["sub"], "agent-7");
    assert_eq!(c["clearance"], 3);
    assert_eq!(c["channels"], serde_json::json!(["ops", "team.*"]));
    assert_eq!(c["publish"], true);
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 600);

    // The same key from TESSERA_SECRET; surrounding whitespace ignored.
    let r = sb.run(&["verify"], Some(SECRET), format!("\n  {t} \r\n\t").as_bytes());
    assert_eq!(claims(&r)["sub"], "agent-7");
    let r = sb.run(&["token", "--sub", "env"], Some(SECRET), b"");
    assert_eq!(claims(&sb.verify(&key, &[], r.stdout.trim()))["sub"], "env");
}

#[test]
fn spec1_issuer_and_audience() {
    let sb = Sandbox::new("iss-aud");
    let key = sb.file("k", SECRET);
    let t = sb.token(&key, &["--sub", "a", "--issuer", "hq", "--audience", "hub"]);
    let c = claims(&sb.verify(&key, &["--issuer", "hq", "--audience", "hub"], &t));
    assert_eq!((&c["iss"], &c["aud"]), (&"hq".into(), &"hub".into()));
    rejected(&sb.verify(&key, &["--issuer", "other"], &t), "wrong_issuer");
    rejected(&sb.verify(&key, &["--audience", "other"], &t), "wrong_audience");
    let plain = sb.token(&key, &["--sub", "a"]);
    rejected(&sb.verify(&key, &["--issuer", "hq"], &plain), "wrong_issuer");
    rejected(&sb.verify(&key, &["--audience", "hub"], &plain), "wrong_audience");
}

#[test]
fn spec3_expiry_and_not_yet_valid_with_at_and_leeway() {
    let sb = Sandbox::new("at");
    let key = sb.file("k", SECRET);
    let t = sb.token(&key, &["--sub", "a", "--ttl", "100"]);
    let c = claims(&sb.verify(&key, &[], &t));
    let (iat, exp) = (c["iat"].as_u64().unwrap(), c["exp"].as_u64().unwrap());
    let at = |s: u64| s.to_string();
    // Valid while now < exp + leeway (default 30).
    claims(&sb.verify(&key, &["--at", &at(exp + 29)], &t));
    rejected(&sb.verify(&key, &["--at", &at(exp + 30)], &t), "token_expired");
    rejected(
        &sb.verify(&key, &["--at", &at(exp), "--leeway", "0"], &t),
        "token_expired",
    );
    claims(&sb.verify(&key, &["--at", &at(exp - 1), "--leeway", "0"], &t));
    // `iat` more than the leeway in the future.
    claims(&sb.verify(&key, &["--at", &at(iat - 30)], &t));
    rejected(&sb.verify(&key, &["--at", &at(iat - 31)], &t), "token_not_yet_valid");
}

#[test]
fn spec3_tampered_and_malformed_tokens() {
    let sb = Sandbox::new("tampered");
    let key = sb.file("k", SECRET);
    let t = sb.token(&key, &["--sub", "agent-7", "--clearance", "1"]);
    let (header, rest) = t.split_once('.').unwrap();
    let (body, sig) = rest.split_once('.').unwrap();
    // Swap one character of the claims for another base64url character.
    let mut b = body.as_bytes().to_vec();
    b[5] = if b[5] == b'A' { b'B' } else { b'A' };
    let forged = format!("{header}.{}.{sig}", String::from_utf8(b).unwrap());
    rejected(&sb.verify(&key, &[], &forged), "bad_signature");
    // Signed with another key.
    let other = sb.file("other", K1);
    rejected(
        &sb.verify(&key, &[], &sb.token(&other, &["--sub", "a"])),
        "bad_signature",
    );
    // `alg: none` with the signature dropped.
    let none = format!("eyJhbGciOiJub25lIn0.{body}.");
    rejected(&sb.verify(&key, &[], &none), "unsupported_alg");
    for bad in [
        "".to_string(),
        "not a token".to_string(),
        format!("{header}.{body}"),
        format!("{t}.x"),
        format!("{header}=.{body}.{sig}"),
        t.replace('.', " . "),
    ] {
        rejected(&sb.verify(&key, &[], &bad), "malformed_token");
    }
    rejected(&sb.run(&["verify"], Some(SECRET), b"\xff\xfe."), "malformed_token");
}

#[test]
fn spec3_one_megabyte_token_is_refused_at_the_size_check() {
    let sb = Sandbox::new("huge");
    let key = sb.file("k", SECRET);
    let t = sb.token(&key, &["--sub", "a"]);
    for size in [1_000_000, 1 << 20, 3 << 20] {
        // A real token padded with a huge claims segment.
        let (header, _) = t.split_once('.').unwrap();
        let huge = format!("{header}.{}.{}", "A".repeat(size), "B".repeat(43));
        let start = Instant::now();
        let r = sb.run(
            &["verify", "--secret-file", key.to_str().unwrap()],
            None,
            huge.as_bytes(),
        );
        rejected(&r, "malformed_token");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{size} bytes took {:?}",
            start.elapsed()
        );
    }
}

// --- keys: kid, and files that cannot be used (exit 2) ---------------------------------------

#[test]
fn spec2_kid_files() {
    let sb = Sandbox::new("kid");
    let both = sb.file("both", &format!("# keys\nk1:{K1}\n\nk2:{K2}\n"));
    let only_k1 = sb.file("k1", &format!("k1:{K1}\n"));
    let t2 = sb.token(&both, &["--sub", "a", "--kid", "k2"]);
    assert_eq!(claims(&sb.verify(&both, &[], &t2))["sub"], "a");
    rejected(&sb.verify(&only_k1, &[], &t2), "unknown_kid");
    // A kid token against a file without ids.
    let unnamed = sb.file("unnamed", K1);
    rejected(&sb.verify(&unnamed, &[], &t2), "unknown_kid");
    // Default: the first key signs.
    let t1 = sb.token(&both, &["--sub", "b"]);
    assert_eq!(claims(&sb.verify(&only_k1, &[], &t1))["sub"], "b");
    // Unknown --kid for signing: exit 2, naming the flag.
    let r = sb.run(
        &[
            "token",
            "--sub",
            "a",
            "--kid",
            "k9",
            "--secret-file",
            both.to_str().unwrap(),
        ],
        None,
        b"",
    );
    usage_error(&r, "--kid");
}

#[test]
fn spec1_unusable_keys_exit_2_without_echoing_them() {
    let sb = Sandbox::new("bad-keys");
    let short = sb.file("short", &format!("{SHORT}\n"));
    let short_kid = sb.file("short-kid", &format!("k1:{K1}\nk2:{SHORT}\n"));
    let mixed = sb.file("mixed", &format!("{K1}\nk2:{K2}\n"));
    let empty = sb.file("empty", "# nothing here\n\n");
    let binary = sb.path("binary");
    std::fs::write(&binary, b"\xff\xfe\x00 not text").unwrap();
    let missing = sb.path("missing");
    let token = {
        let good = sb.file("good", SECRET);
        sb.token(&good, &["--sub", "a"])
    };
    let cases: [(&Path, &str); 7] = [
        (&short, "at least 32"),
        (&short_kid, "at least 32"),
        (&mixed, "mixes"),
        (&empty, "no key"),
        (&binary, "cannot be read"),
        (&missing, "cannot be read"),
        (&sb.dir, "cannot be read"),
    ];
    for (file, words) in cases {
        let f = file.to_str().unwrap();
        for args in [
            vec!["verify", "--secret-file", f],
            vec!["token", "--sub", "a", "--secret-file", f],
        ] {
            let r = sb.run(&args, None, token.as_bytes());
            usage_error(&r, words);
            assert!(r.stderr.contains(f), "the file is named: {r:?}");
            assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
        }
    }
    // No key at all, or a short one in the environment.
    usage_error(&sb.run(&["verify"], None, token.as_bytes()), "TESSERA_SECRET");
    usage_error(&sb.run(&["token", "--sub", "a"], None, b""), "TESSERA_SECRET");
    usage_error(&sb.run(&["verify"], Some(SHORT), token.as_bytes()), "TESSERA_SECRET");
    usage_error(&sb.run(&["token", "--sub", "a"], Some(SHORT), b""), "at least 32");
}

#[test]
fn spec1_bad_flags_exit_2() {
    let sb = Sandbox::new("flags");
    let key = sb.file("k", SECRET);
    let k = key.to_str().unwrap();
    for args in [
        vec!["verify", "--secret-file", k, "--leeway", "soon"],
        vec!["verify", "--secret-file", k, "--at", "-1"],
        vec!["verify", "--secret-file", k, "--nonsense"],
        vec!["token", "--secret-file", k],
        vec!["token", "--secret-file", k, "--sub", "a", "--clearance", "4294967296"],
        vec!["token", "--secret-file", k, "--sub", ""],
        vec![
            "token",
            "--secret-file",
            k,
            "--sub",
            "a",
            "--ttl",
            "18446744073709551615",
        ],
        vec!["frobnicate"],
        vec![],
    ] {
        let r = sb.run(&args, None, b"");
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert_eq!(r.stdout, "", "{args:?}: {r:?}");
        assert!(!r.stderr.is_empty(), "{args:?}: {r:?}");
    }
    // A secret is never a flag value, and one given as such is not echoed.
    let r = sb.run(&["verify", "--secret", SECRET], None, b"");
    assert_eq!(r.code, 2, "{r:?}");
}

#[test]
fn version_names_version_commit_and_profile() {
    let sb = Sandbox::new("version");
    for flag in ["--version", "-V"] {
        let r = sb.run(&[flag], None, b"");
        assert_eq!(r.code, 0, "{r:?}");
        let line = r.stdout.trim();
        assert!(
            line.starts_with(&format!("tessera {} (commit ", env!("CARGO_PKG_VERSION"))),
            "{line}"
        );
        assert_eq!(r.stdout.lines().count(), 1, "{r:?}");
    }
}

#[test]
fn pyjwt_fixture_verifies_through_the_binary() {
    let f: serde_json::Value = serde_json::from_str(include_str!("fixtures/pyjwt.json")).unwrap();
    let mut sb = Sandbox::new("pyjwt");
    sb.secrets.push(f["key"].as_str().unwrap().into());
    let key = sb.file("pyjwt.key", f["key"].as_str().unwrap());
    let kid_keys = sb.file("pyjwt-kid.keys", f["kid_keys"].as_str().unwrap());
    for t in f["tokens"].as_array().unwrap() {
        let file = if t["keys"] == "kid" { &kid_keys } else { &key };
        let mut args = vec!["--at", "1800000000"];
        for (flag, field) in [("--issuer", "issuer"), ("--audience", "audience")] {
            if let Some(v) = t[field].as_str() {
                args.extend([flag, v]);
            }
        }
        let r = sb.verify(file, &args, t["token"].as_str().unwrap());
        match t["reason"].as_str() {
            Some(code) => rejected(&r, code),
            None => assert_eq!(claims(&r), t["claims"], "{}", t["name"]),
        }
    }
}
