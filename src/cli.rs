//! The command line, declared once as data. The doc comments below are the
//! `--help` text.

use argh::FromArgs;
use std::path::PathBuf;

/// tessera: a small authenticated WebSocket hub for edge devices.
///
/// Keys come from --secret-file PATH or the TESSERA_SECRET environment
/// variable, never from a flag value.
#[derive(FromArgs, Debug)]
pub struct TopLevel {
    /// print the version, commit and build profile, then exit
    #[argh(switch, short = 'V')]
    pub version: bool,

    #[argh(subcommand)]
    pub command: Option<Command>,
}

// Parsed once at start: the size of the `serve` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Serve(Serve),
    Keygen(Keygen),
    Useradd(Useradd),
    Agent(Agent),
    Token(Token),
    Verify(Verify),
}

/// Print a new random signing key (32 random bytes, base64url), or write it
/// to a file readable only by its owner.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "keygen")]
pub struct Keygen {
    /// write the key to this file (mode 0600; an existing file is not
    /// overwritten) instead of printing it
    #[argh(option)]
    pub out: Option<PathBuf>,
}

/// Mint a signed access token offline (for operations and tests) and print
/// it on stdout.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "token")]
pub struct Token {
    /// the agent id (claim `sub`, 1-128 bytes)
    #[argh(option)]
    pub sub: String,
    /// clearance level (claim `clearance`) [0]
    #[argh(option, default = "0")]
    pub clearance: u32,
    /// lifetime in seconds [3600]
    #[argh(option, default = "3600")]
    pub ttl: u64,
    /// comma-separated channels the token is limited to (exact names or
    /// prefixes ending in `*`); default: unrestricted
    #[argh(option)]
    pub channels: Option<String>,
    /// allow publishing (claim `publish: true`)
    #[argh(switch)]
    pub publish: bool,
    /// sign with the key of this id in a multi-key file [the first key]
    #[argh(option)]
    pub kid: Option<String>,
    /// comma-separated authentication methods to put in `amr` (RFC 8176),
    /// e.g. pwd,otp for a token that passes --mfa-min-clearance
    #[argh(option)]
    pub amr: Option<String>,
    /// issuer to put in `iss`
    #[argh(option)]
    pub issuer: Option<String>,
    /// audience to put in `aud`
    #[argh(option)]
    pub audience: Option<String>,
    /// key file (else env TESSERA_SECRET)
    #[argh(option)]
    pub secret_file: Option<PathBuf>,
}

/// Check a token read from stdin exactly as the WebSocket handshake does.
/// Prints its claims as JSON on stdout (exit 0), or `rejected: <reason>` on
/// stderr (exit 1). Exit 2 for unusable keys or flags.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "verify")]
pub struct Verify {
    /// key file (else env TESSERA_SECRET)
    #[argh(option)]
    pub secret_file: Option<PathBuf>,
    /// clock-skew allowance in seconds [30]
    #[argh(option, default = "30")]
    pub leeway: u64,
    /// require this `iss`
    #[argh(option)]
    pub issuer: Option<String>,
    /// require this `aud`
    #[argh(option)]
    pub audience: Option<String>,
    /// check as of this Unix time instead of now
    #[argh(option)]
    pub at: Option<u64>,
}

/// Run the hub: HTTP and WebSocket on one port, every socket authenticated
/// with a token during the handshake.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "serve")]
pub struct Serve {
    /// address to listen on [127.0.0.1:8080]
    #[argh(option, default = "\"127.0.0.1:8080\".into()")]
    pub listen: String,
    /// signing key file (else env TESSERA_SECRET); reloaded on SIGHUP
    #[argh(option)]
    pub secret_file: Option<PathBuf>,
    /// users file (NAME:CLEARANCE:PUBLISH:CHANNELS:HASH[:totp:SECRET]
    /// lines); reloaded on SIGHUP
    #[argh(option)]
    pub users: Option<PathBuf>,
    /// state file for sessions and revocations (written atomically); without
    /// it they live in memory only (refused with --redis: they live in Redis)
    #[argh(option)]
    pub state: Option<PathBuf>,
    /// omit `Secure` from cookies (plain-HTTP development only)
    #[argh(switch)]
    pub insecure_cookies: bool,
    /// access token lifetime in seconds [3600]
    #[argh(option, default = "3600")]
    pub access_ttl: u64,
    /// refresh token lifetime in seconds [604800]
    #[argh(option, default = "604800")]
    pub refresh_ttl: u64,
    /// clock-skew allowance in seconds [30]
    #[argh(option, default = "30")]
    pub leeway: u64,
    /// require (and issue) this `iss`
    #[argh(option)]
    pub issuer: Option<String>,
    /// require (and issue) this `aud`
    #[argh(option)]
    pub audience: Option<String>,
    /// minimum clearance to open a socket [0]
    #[argh(option, default = "0")]
    pub min_clearance: u32,
    /// users with at least this clearance must log in with a TOTP code
    /// (others: 403 mfa_not_enrolled), and sockets with a token of at least
    /// this clearance need `otp` in its `amr` (403 mfa_required) [off]
    #[argh(option)]
    pub mfa_min_clearance: Option<u32>,
    /// tokens with at least this clearance (and, with --mfa-min-clearance,
    /// `otp` in `amr`) are operators: GET /admin/connections, GET
    /// /admin/events, POST /admin/revoke and the `$security` channel
    /// [off; 5 with --demo]
    #[argh(option)]
    pub admin_min_clearance: Option<u32>,
    /// clearance needed for a channel, NAME=LEVEL (repeatable; unlisted: 0)
    #[argh(option, from_str_fn(parse_channel_level))]
    pub channel: Vec<(String, u32)>,
    /// browser origin allowed to open sockets with the cookie (repeatable);
    /// default: the origin of the request's own Host
    #[argh(option)]
    pub allowed_origin: Vec<String>,
    /// also accept ?access_token= on the upgrade request (URLs leak into logs)
    #[argh(switch)]
    pub allow_query_token: bool,
    /// most open sockets [1024]
    #[argh(option, default = "1024")]
    pub max_connections: usize,
    /// largest client message in bytes; larger closes with 1009 [65536]
    #[argh(option, default = "65536")]
    pub max_message_bytes: usize,
    /// messages queued per socket before publishers to its channels wait
    /// for it; a socket that stays over it without write progress for 3 s,
    /// or reaches 4x it, is closed as a slow consumer (4008) [256]
    #[argh(option, default = "256")]
    pub queue_depth: usize,
    /// messages kept per channel for resume (0 = off) [100]
    #[argh(option, default = "100")]
    pub history: usize,
    /// oldest age of a kept message, in seconds [3600]
    #[argh(option, default = "3600")]
    pub history_ttl: u64,
    /// total bytes of kept messages across all channels, oldest dropped
    /// first [16777216]
    #[argh(option, default = "16777216")]
    pub history_max_bytes: u64,
    /// keep history on disk in this directory so it survives restarts and
    /// crashes (append-only, checksummed; created if missing)
    #[argh(option)]
    pub history_dir: Option<PathBuf>,
    /// seconds between server pings; a socket silent for another interval
    /// is closed [30]
    #[argh(option, default = "30")]
    pub ping_interval: u64,
    /// seconds a client has to send a full request head [10]
    #[argh(option, default = "10")]
    pub handshake_timeout: u64,
    /// log lines on stderr: json or text [json]
    #[argh(option, default = "\"json\".into()")]
    pub log_format: String,
    /// serve https/wss with this PEM certificate chain (cargo feature `tls`);
    /// reloaded on SIGHUP
    #[argh(option)]
    pub tls_cert: Option<PathBuf>,
    /// the PEM private key (PKCS#8, RSA or EC) for --tls-cert
    #[argh(option)]
    pub tls_key: Option<PathBuf>,
    /// demo mode: ephemeral key, channels ops=1 and briefing=3, a ticker on
    /// ops every 5 s, ready-made tokens printed on stdout
    #[argh(switch)]
    pub demo: bool,

    // Hostile clients: budgets for connections that have not upgraded.
    /// most connections that have not upgraded yet; at the cap a silent one
    /// (waiting longest for a request head) is closed to make room [1024]
    #[argh(option, default = "1024")]
    pub max_pending: usize,
    /// most not-yet-upgraded connections per client address (IPv6: per
    /// /64; trusted proxies exempt) [64]
    #[argh(option, default = "64")]
    pub max_pending_per_address: usize,
    /// seconds an HTTP response may take to be written before the
    /// connection is closed [10]
    #[argh(option, default = "10")]
    pub write_timeout: u64,
    /// seconds a kept-alive connection may wait for its next request [5]
    #[argh(option, default = "5")]
    pub keepalive_timeout: u64,
    /// proxy address or block (CIDR) whose `Forwarded`/`X-Forwarded-For`
    /// names the client for throttling and logs (repeatable)
    #[argh(option, from_str_fn(parse_cidr))]
    pub trusted_proxy: Vec<crate::http::Cidr>,
    /// serve /metrics and /healthz on this second address (e.g.
    /// 127.0.0.1:9090) instead of on --listen
    #[argh(option)]
    pub metrics_listen: Option<String>,
    /// live sessions one user may hold; a login past it revokes the user's
    /// least recently refreshed session [32]
    #[argh(option, default = "32")]
    pub max_sessions_per_user: usize,
    /// channels one socket may be subscribed to, its personal channel
    /// included; more get error `too_many_subscriptions` [256]
    #[argh(option, default = "256")]
    pub max_subscriptions: usize,
    /// channels the server keeps; a publish or subscribe that would create
    /// another gets `too_many_channels` (POST /publish: 503); channels with
    /// no subscriber and nothing retained go after --history-ttl [65536]
    #[argh(option, default = "65536")]
    pub max_channels: usize,
    /// client messages (commands other than publish, and pings) per second
    /// per socket, with bursts up to 4x; over it the reply is error
    /// `rate_limited`, and a socket that keeps going for a second's worth is
    /// closed with 1008 [100]
    #[argh(option, default = "100")]
    pub max_commands_per_sec: u32,
    /// open sockets per token `sub`; more get 503 `too_many_sockets` [8]
    #[argh(option, default = "8")]
    pub max_sockets_per_sub: usize,
    /// open sockets per client address (IPv6: per /64); more get 503
    /// `too_many_sockets` [256]
    #[argh(option, default = "256")]
    pub max_sockets_per_address: usize,

    // Cluster mode (SPEC §12).
    /// run as one node of a cluster on this Redis:
    /// redis://[user:pass@]HOST:PORT[/DB] (cargo feature `cluster`), or
    /// redis://user@HOST... with the password in env TESSERA_REDIS_PASSWORD
    /// (kept out of the process list); publications, offsets, epochs and
    /// history then live in Redis
    #[argh(option)]
    pub redis: Option<String>,
    /// prefix of every Redis key and pub/sub channel this cluster uses
    /// (1-64 of A-Z a-z 0-9 _ . : -) [tessera]
    #[argh(option)]
    pub redis_prefix: Option<String>,
    /// this node's name in logs and /healthz (1-64 of A-Z a-z 0-9 _ . -)
    /// [random]
    #[argh(option)]
    pub node_id: Option<String>,
    /// let several processes listen on the same --listen address
    /// (SO_REUSEPORT, Linux): one node per core on one machine
    #[argh(switch)]
    pub reuse_port: bool,
}

fn parse_cidr(s: &str) -> Result<crate::http::Cidr, String> {
    crate::http::Cidr::parse(s)
}

fn parse_channel_level(s: &str) -> Result<(String, u32), String> {
    let (name, level) = s.split_once('=').ok_or("expected NAME=LEVEL")?;
    if !crate::hub::channel_name_ok(name) {
        return Err(format!(
            "{name:?} is not a channel name (1-64 of A-Z a-z 0-9 _ . : - @)"
        ));
    }
    let level = level
        .parse()
        .map_err(|_| format!("{level:?} is not a level (0-4294967295)"))?;
    Ok((name.to_string(), level))
}

/// Add a user to a users file, or update one. The password is read from
/// stdin (without echo on a terminal), never from a flag. The file is
/// rewritten atomically; comments survive. Re-adding a user keeps its TOTP
/// secret unless --totp or --no-totp says otherwise.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "useradd")]
pub struct Useradd {
    /// the users file (created if missing)
    #[argh(option)]
    pub users: PathBuf,
    /// the user name (the token's `sub`)
    #[argh(option)]
    pub name: String,
    /// clearance level [0]
    #[argh(option, default = "0")]
    pub clearance: u32,
    /// allow publishing
    #[argh(switch)]
    pub publish: bool,
    /// comma-separated channels the user is limited to (exact names or
    /// prefixes ending in `*`); default: unrestricted
    #[argh(option)]
    pub channels: Option<String>,
    /// PBKDF2 iterations [600000]; lower only for slow devices or tests
    #[argh(option, default = "crate::auth::users::DEFAULT_ITERATIONS")]
    pub iterations: u32,
    /// enrol in the second factor: make a new TOTP secret and print its
    /// otpauth:// URI and a QR code of it for an authenticator app
    #[argh(switch)]
    pub totp: bool,
    /// remove the user's TOTP secret (log in with the password alone)
    #[argh(switch)]
    pub no_totp: bool,
}

/// The field client: log in, connect, subscribe, and print every server
/// message as one JSON line on stdout. Refreshes before expiry and
/// reconnects after drops. The password comes from env TESSERA_PASSWORD,
/// --password-file, or a prompt on a terminal. When the server asks for a
/// second factor, the one-time code comes from env TESSERA_OTP (used once)
/// or a prompt on a terminal.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "agent")]
pub struct Agent {
    /// the hub's WebSocket URL, e.g. ws://127.0.0.1:8080/ws
    #[argh(option)]
    pub url: String,
    /// the user to log in as
    #[argh(option)]
    pub username: Option<String>,
    /// read the password from this file (first line)
    #[argh(option)]
    pub password_file: Option<PathBuf>,
    /// use a ready access token from this file instead of logging in (no
    /// refresh: the agent stops when it expires)
    #[argh(option)]
    pub token_file: Option<PathBuf>,
    /// channel to subscribe to (repeatable)
    #[argh(option)]
    pub subscribe: Vec<String>,
    /// publish each JSON line read from stdin to this channel instead
    #[argh(option)]
    pub publish: Option<String>,
    /// keep the last position (epoch and offset) of every channel in this
    /// file, so that a restarted agent resumes where it stopped; written
    /// atomically at most once a second and at exit; created when missing
    #[argh(option)]
    pub positions: Option<PathBuf>,
    /// also trust the CA certificates in this PEM file for wss:// (besides
    /// the system roots; cargo feature `tls`)
    #[argh(option)]
    pub ca_file: Option<PathBuf>,
}
