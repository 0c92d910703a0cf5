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

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Keygen(Keygen),
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
