//! The offline subcommands: `keygen`, `token`, `verify`, `useradd`. Each returns
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
    crate::reactor::wall_now()
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
    let amr = match &args.amr {
        None => None,
        Some(list) => Some(parse_amr(list)?),
    };
    let claims = Claims {
        sub: args.sub.clone(),
        exp: exp as f64,
        iat: Some(now as f64),
        iss: args.issuer.clone(),
        aud: args.audience.iter().cloned().collect(),
        clearance: args.clearance,
        channels,
        publish: args.publish,
        amr,
        ..Claims::default()
    };
    let token = jwt::sign(&claims, &keys, args.kid.as_deref()).map_err(|e| Failure::usage(format!("--kid: {e}")))?;
    println!("{token}");
    Ok(())
}

/// `--amr pwd,otp`: RFC 8176 method names, 1-32 of `a-z A-Z 0-9 _ -`.
fn parse_amr(list: &str) -> Result<Vec<String>, Failure> {
    let methods: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(String::from)
        .collect();
    let ok = |m: &String| {
        (1..=32).contains(&m.len()) && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if methods.is_empty() || !methods.iter().all(ok) {
        return Err(Failure::usage("--amr: a comma list of method names, e.g. pwd,otp"));
    }
    Ok(methods)
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

/// 16 random bytes.
pub fn random16() -> Result<[u8; 16], Failure> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| Failure::usage(format!("no randomness from the OS: {e}")))?;
    Ok(b)
}

/// Prompts on the terminal and reads one line without echo (via `stty`).
pub fn prompt_password() -> Result<String, Failure> {
    let stty = |arg: &str| {
        let _ = std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status();
    };
    let mut line = String::new();
    // Echo goes off before the prompt shows, so a fast typist's first
    // characters are not echoed either.
    stty("-echo");
    eprint!("password: ");
    let r = std::io::stdin().read_line(&mut line);
    stty("echo");
    eprintln!();
    r.map_err(|e| Failure::usage(format!("stdin: {}", e.kind())))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Reads a password from stdin: a no-echo prompt on a terminal, else all of
/// stdin minus one trailing newline.
fn read_password() -> Result<String, Failure> {
    use std::io::IsTerminal;
    let pw = if std::io::stdin().is_terminal() {
        prompt_password()?
    } else {
        let mut text = String::new();
        std::io::stdin()
            .lock()
            .take(64 * 1024)
            .read_to_string(&mut text)
            .map_err(|_| Failure::usage("stdin: the password must be UTF-8 text"))?;
        let t = text.strip_suffix('\n').unwrap_or(&text);
        t.strip_suffix('\r').unwrap_or(t).to_string()
    };
    if pw.is_empty() {
        return Err(Failure::usage("stdin: empty password"));
    }
    Ok(pw)
}

/// `tessera useradd --users FILE --name N …`: adds or replaces a user.
pub fn useradd(args: &cli::Useradd) -> Result<(), Failure> {
    use crate::auth::users::{self, PasswordHash, User, UsersFile};
    if !users::name_ok(&args.name) {
        return Err(Failure::usage("--name: 1-128 bytes without ':' or spaces"));
    }
    if !(1..=users::MAX_ITERATIONS).contains(&args.iterations) {
        return Err(Failure::usage("--iterations: 1-10000000"));
    }
    let channels: Vec<String> = args
        .channels
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect();
    for c in &channels {
        if !crate::hub::pattern_ok(c) {
            return Err(Failure::usage(format!(
                "--channels: {c:?} is not a channel name or prefix*"
            )));
        }
    }
    let path = &args.users;
    let mut file = match std::fs::read_to_string(path) {
        Ok(text) => UsersFile::parse(&text).map_err(|e| Failure::usage(format!("--users {}: {e}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => UsersFile::default(),
        Err(e) => return Err(Failure::usage(format!("--users {}: {}", path.display(), e.kind()))),
    };
    if args.totp && args.no_totp {
        return Err(Failure::usage("--totp and --no-totp: choose one"));
    }
    let password = read_password()?;
    let hash = PasswordHash::new(password.as_bytes(), args.iterations, random16()?);
    let old = file.get(&args.name);
    let replaced = old.is_some();
    // SPEC §11: re-adding without --totp/--no-totp keeps the secret.
    let totp = if args.totp {
        Some(new_totp_secret()?)
    } else if args.no_totp {
        None
    } else {
        old.and_then(|u| u.totp.clone())
    };
    let enrolled = totp.clone().filter(|_| args.totp);
    file.upsert(User {
        name: args.name.clone(),
        clearance: args.clearance,
        publish: args.publish,
        channels,
        hash,
        totp,
    });
    crate::auth::state_file::write_atomic(path, file.render().as_bytes())
        .map_err(|e| Failure::usage(format!("--users {}: {}", path.display(), e.kind())))?;
    eprintln!(
        "tessera: {} user {:?} in {}",
        if replaced { "updated" } else { "added" },
        args.name,
        path.display()
    );
    if let Some(secret) = enrolled {
        print_enrolment(&args.name, &secret);
    } else if args.no_totp {
        eprintln!(
            "tessera: {:?} logs in with the password alone (no TOTP secret)",
            args.name
        );
    }
    Ok(())
}

/// A new 20-byte TOTP secret from the OS.
fn new_totp_secret() -> Result<crate::auth::totp::TotpSecret, Failure> {
    let mut b = [0u8; crate::auth::totp::NEW_SECRET_BYTES];
    getrandom::fill(&mut b).map_err(|e| Failure::usage(format!("no randomness from the OS: {e}")))?;
    crate::auth::totp::TotpSecret::from_bytes(&b).map_err(Failure::usage)
}

/// Prints the `otpauth://` URI and its QR code on stdout, for the person
/// enrolling (and only for them: it goes nowhere else).
fn print_enrolment(name: &str, secret: &crate::auth::totp::TotpSecret) {
    let uri = secret.otpauth_uri(name);
    println!("Scan this QR code with an authenticator app (or enter the secret by hand):");
    match terminal_qr(&uri) {
        Some(qr) => println!("{qr}"),
        None => println!("(the URI is too long for a QR code)"),
    }
    println!("{uri}");
    println!("secret: {}", secret.to_base32());
}

/// `text` as a QR code drawn with half blocks, two modules a character, for
/// a dark terminal: light modules (and the quiet zone) are drawn, dark ones
/// left blank, as `qrencode -t UTF8` does.
pub fn terminal_qr(text: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}
