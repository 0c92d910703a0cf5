//! Build script: embeds what `tessera --version` and `/healthz` report.
//!
//! - `TESSERA_VERSION`: the crate version;
//! - `TESSERA_COMMIT`: the git commit the binary was built from (`unknown`
//!   outside a git checkout, with `-dirty` when the tree had changes);
//! - `TESSERA_PROFILE`: the cargo profile (`debug`, `release`, `edge`, …),
//!   read from the output directory because `PROFILE` only says
//!   debug/release for custom profiles.
//!
//! And the console page (SPEC §8): `assets/console.html` with
//! `console.css` and `console.js` put inline, minified, written to
//! `OUT_DIR/console.html` and gzipped to `OUT_DIR/console.html.gz`;
//! `TESSERA_CONSOLE_CSP` is its Content-Security-Policy, which allows the
//! inline style and script by their SHA-256 (CSP3 hash sources) and nothing
//! else: no 'unsafe-inline'. The hashes come from `sha2` and `base64` and
//! the gzip member from `flate2` (pure-Rust miniz_oxide backend), all
//! `[build-dependencies]`: nothing of them reaches the binary.

use std::path::Path;
use std::process::Command;

fn main() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_else(|_| "0.0.0".into());
    println!("cargo:rustc-env=TESSERA_VERSION={version}");
    println!("cargo:rustc-env=TESSERA_COMMIT={}", git_commit());
    println!("cargo:rustc-env=TESSERA_PROFILE={}", profile());
    console_page();

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

// ---- the console page ----

fn console_page() {
    let read = |name: &str| {
        let path = format!("assets/{name}");
        println!("cargo:rerun-if-changed={path}");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let css = minify_css(&read("console.css"));
    let js = minify_js(&read("console.js"));
    assert!(!css.contains("</"), "console.css must not contain `</`");
    assert!(!js.contains("</"), "console.js must not contain `</`");
    let html = minify_html(&read("console.html"));
    let css_tag = r#"<link rel="stylesheet" href="console.css">"#;
    let js_tag = r#"<script src="console.js"></script>"#;
    assert!(
        html.contains(css_tag) && html.contains(js_tag),
        "console.html must name console.css and console.js"
    );
    let page = html.replacen(css_tag, &format!("<style>{css}</style>"), 1).replacen(
        js_tag,
        &format!("<script>{js}</script>"),
        1,
    );
    let csp = format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        csp_hash(js.as_bytes()),
        csp_hash(css.as_bytes())
    );
    println!("cargo:rustc-env=TESSERA_CONSOLE_CSP={csp}");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let out = Path::new(&out);
    std::fs::write(out.join("console.html"), &page).expect("write console.html");
    std::fs::write(out.join("console.html.gz"), gzip(page.as_bytes())).expect("write console.html.gz");
}

/// Drops `<!-- … -->` comments and the indentation and line breaks around
/// tags. Text that runs over a line break keeps one space.
fn minify_html(s: &str) -> String {
    let s = strip_comments(s, "<!--", "-->");
    let mut out = String::with_capacity(s.len());
    for line in s.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() && !out.ends_with('>') && !line.starts_with('<') {
            out.push(' ');
        }
        out.push_str(line);
    }
    out
}

/// Drops comments and collapses whitespace, none around `{ } ; : , >`.
fn minify_css(s: &str) -> String {
    let s = strip_comments(s, "/*", "*/");
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        let glued = out.is_empty()
            || out.ends_with(['{', '}', ';', ':', ',', '>'])
            || word.starts_with(['{', '}', ';', ',', '>']);
        if !glued {
            out.push(' ');
        }
        out.push_str(word);
    }
    out.replace(";}", "}")
}

/// Line by line (the script keeps no string or template over a line break):
/// drops indentation, blank lines, comment lines and ` // ` comments after
/// code when the code before them has balanced quotes. Line breaks stay, so
/// automatic semicolon insertion sees what it saw.
fn minify_js(s: &str) -> String {
    let mut lines = Vec::new();
    for line in s.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let code = match line.find(" // ") {
            Some(i) if ['\'', '"', '`'].iter().all(|q| line[..i].matches(*q).count() % 2 == 0) => line[..i].trim_end(),
            _ => line,
        };
        lines.push(code);
    }
    lines.join("\n")
}

fn strip_comments(s: &str, open: &str, close: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(open) {
        out.push_str(&rest[..i]);
        rest = rest[i..].find(close).map_or("", |j| &rest[i + j + close.len()..]);
    }
    out.push_str(rest);
    out
}

/// Standard base64 with padding (RFC 4648 §4) of a SHA-256, as CSP3 hash
/// sources spell it.
fn csp_hash(data: &[u8]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data))
}

/// A gzip member (RFC 1952) at the best compression level, with no file
/// name and a zero time, so builds are reproducible.
fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}
