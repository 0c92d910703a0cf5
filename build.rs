//! Build script: embeds what `tessera --version` and `/healthz` report.
//!
//! - `TESSERA_VERSION`: the crate version;
//! - `TESSERA_COMMIT`: the git commit the binary was built from (`unknown`
//!   outside a git checkout, with `-dirty` when the tree had changes);
//! - `TESSERA_PROFILE`: the cargo profile (`debug`, `release`, `edge`, …),
//!   read from the output directory because `PROFILE` only says
//!   debug/release for custom profiles.

use std::path::Path;
use std::process::Command;

fn main() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_else(|_| "0.0.0".into());
    println!("cargo:rustc-env=TESSERA_VERSION={version}");
    println!("cargo:rustc-env=TESSERA_COMMIT={}", git_commit());
    println!("cargo:rustc-env=TESSERA_PROFILE={}", profile());

    // Rebuild when the checked-out commit moves.
    let git_dir = Path::new(".git");
    if git_dir.exists() {
        println!("cargo:rerun-if-changed=.git/HEAD");
        println!("cargo:rerun-if-changed=.git/index");
        if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD"))
            && let Some(r) = head.strip_prefix("ref: ")
        {
            println!("cargo:rerun-if-changed=.git/{}", r.trim());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    Some(s.trim().to_string())
}

fn git_commit() -> String {
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) if !c.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .map(|s| !s.is_empty())
                .unwrap_or(false);
            if dirty { format!("{c}-dirty") } else { c }
        }
        _ => "unknown".into(),
    }
}

/// `OUT_DIR` is `<target>/[<triple>/]<profile>/build/<pkg>-<hash>/out`.
fn profile() -> String {
    let out = std::env::var("OUT_DIR").unwrap_or_default();
    Path::new(&out)
        .ancestors()
        .nth(3)
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .unwrap_or_else(|| std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into()))
}
