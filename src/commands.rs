//! The offline subcommands: `keygen`, `token`, `verify`. Each returns
//! `Ok(())` or a [`Failure`] that `main` turns into one stderr line and an
//! exit code.

use crate::cli;
use crate::jwt::{self, Claims, VerifyOptions};
use crate::keys::{self, KeySet};
use std::io::{Read, Write};

/// A command that did not succeed: what to print and how to exit.
#[derive(Debug)]
pub struct Failure {
    /// Exit status: 1 for a rejected token, 2 for bad flags or files.
    pub code: u8,
    /// One line for stderr (no secret in it).
    pub message: String,
}

impl Failure {
    /// Exit 2: bad flags or unusable files.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The key set for a command: `--secret-file`, else `TESSERA_SECRET`.
pub fn load_keys(secret_file: Option<&std::path::Path>) -> Result<KeySet, Failure> {
    let env = std::env::var("TESSERA_SECRET").ok();
    KeySet::load(secret_file, env.as_deref()).map_err(Failure::usage)
}

/// `tessera keygen [--out PATH]`.
pub fn keygen(args: &cli::Keygen) -> Result<(), Failure> {
    let key = keys::generate().map_err(|e| Failure::usage(format!("no randomness from the OS: {e}")))?;
    match &args.out {
        None => {
            println!("{key}");
            Ok(())
        }
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| Failure::usage(format!("--out {}: {}", path.display(), e.kind())))?;
            f.write_all(format!("{key}\n").as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| Failure::usage(format!("--out {}: {}", path.display(), e.kind())))?;
            eprintln!("tessera: wrote a new key to {} (mode 0600)", path.display());
            Ok(())
        }
    }
}

/// `tessera token --sub ID …`.
pub fn token(args: &cli::Token) -> Result<(), Failure> {
    if args.sub.is_empty() || args.sub.len() > 128 {
        return Err(Failure::usage("--sub: must be 1-128 bytes"));
    }
    let keys = load_keys(args.secret_file.as_deref())?;
    let now = now_unix();
    let exp = now
        .checked_add(args.ttl)
        .filter(|e| (*e as f64) <= jwt::MAX_NUMERIC_DATE)
        .ok_or_else(|| Failure::usage("--ttl: too large"))?;
    let channels = args.channels.as_ref().map(|c| {
        c.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect::<Vec<_>>()
    });
    let claims = Claims {
        sub: args.sub.clone(),
        exp: exp as f64,
        iat: Some(now as f64),
        iss: args.issuer.clone(),
        aud: args.audience.iter().cloned().collect(),
        clearance: args.clearance,
        channels,
        publish: args.publish,
        ..Claims::default()
    };
    let token = jwt::sign(&claims, &keys, args.kid.as_deref()).map_err(|e| Failure::usage(format!("--kid: {e}")))?;
    println!("{token}");
    Ok(())
}

/// `tessera verify`: the token comes from stdin.
pub fn verify(args: &cli::Verify, stdin: &mut dyn Read) -> Result<(), Failure> {
    let keys = load_keys(args.secret_file.as_deref())?;
    // Read at most a little more than any acceptable token (plus
    // surrounding whitespace); anything longer is refused unread.
    let mut buf = Vec::new();
    stdin
        .take(1 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| Failure::usage(format!("stdin: {}", e.kind())))?;
    let reject = |r: jwt::Reject| Failure {
        code: 1,
        message: format!("rejected: {}", r.as_str()),
    };
    let text = std::str::from_utf8(&buf).map_err(|_| reject(jwt::Reject::MalformedToken))?;
    let opts = VerifyOptions {
        leeway: args.leeway,
        issuer: args.issuer.clone(),
        audience: args.audience.clone(),
    };
    let now = args.at.unwrap_or_else(now_unix);
    let claims = jwt::verify(text.trim(), &keys, &opts, now).map_err(reject)?;
    let json = serde_json::to_string(&claims).map_err(|e| Failure::usage(e.to_string()))?;
    println!("{json}");
    Ok(())
}
