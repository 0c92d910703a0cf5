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
//! else: no 'unsafe-inline'. Build scripts have no dependencies here, so
//! SHA-256, base64, CRC-32 and a small DEFLATE encoder (LZ77 with the fixed
//! Huffman code of RFC 1951 §3.2.6) are written out below.

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
        base64(&sha256(js.as_bytes())),
        base64(&sha256(css.as_bytes()))
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

/// SHA-256 (FIPS 180-4).
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            (hh, g, f, e, d, c, b, a) = (g, f, e, d.wrapping_add(t1), c, b, a, t1.wrapping_add(t2));
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (o, x) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// Standard base64 with padding (RFC 4648 §4), as CSP hash sources use.
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A gzip member (RFC 1952) holding one fixed-Huffman DEFLATE block. No
/// file name or time, so builds are reproducible.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    out.extend(deflate(data));
    out.extend(crc32(data).to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Bits, least significant first (RFC 1951 §3.1.1).
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, len: u32) {
        self.acc |= u64::from(value) << self.n;
        self.n += len;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// Huffman codes go most significant bit first.
    fn code(&mut self, code: u32, len: u32) {
        self.put(code.reverse_bits() >> (32 - len), len);
    }

    /// A literal/length symbol in the fixed code (RFC 1951 §3.2.6).
    fn symbol(&mut self, sym: u32) {
        match sym {
            0..=143 => self.code(0x30 + sym, 8),
            144..=255 => self.code(0x190 + sym - 144, 9),
            256..=279 => self.code(sym - 256, 7),
            _ => self.code(0xc0 + sym - 280, 8),
        }
    }
}

const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145,
    8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13,
];

/// One final fixed-Huffman block; LZ77 with lazy matching over a 32 KiB
/// window, found through hash chains of 3-byte prefixes.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut bits = Bits::default();
    bits.put(1, 1); // BFINAL
    bits.put(1, 2); // BTYPE 01: fixed Huffman codes
    let mut chains = Chains {
        head: vec![NONE; 1 << 15],
        prev: vec![NONE; data.len()],
    };
    let mut i = 0;
    while i < data.len() {
        let (len, dist) = chains.longest_match(data, i);
        chains.insert(data, i);
        // Lazy matching: a longer match one byte on is worth a literal now.
        if len >= 3 && chains.longest_match(data, i + 1).0 <= len {
            let li = LEN_BASE.iter().rposition(|&b| usize::from(b) <= len).unwrap_or(0);
            bits.symbol(257 + li as u32);
            bits.put((len - usize::from(LEN_BASE[li])) as u32, u32::from(LEN_EXTRA[li]));
            let di = DIST_BASE.iter().rposition(|&b| usize::from(b) <= dist).unwrap_or(0);
            bits.code(di as u32, 5);
            bits.put((dist - usize::from(DIST_BASE[di])) as u32, u32::from(DIST_EXTRA[di]));
            for k in i + 1..i + len {
                chains.insert(data, k);
            }
            i += len;
        } else {
            bits.symbol(u32::from(data[i]));
            i += 1;
        }
    }
    bits.symbol(256); // end of block
    bits.put(0, 7); // flush the last partial byte
    bits.out
}

const NONE: usize = usize::MAX;

/// Earlier positions by the hash of the 3 bytes starting there.
struct Chains {
    head: Vec<usize>,
    prev: Vec<usize>,
}

impl Chains {
    fn hash(data: &[u8], i: usize) -> Option<usize> {
        let b = data.get(i..i + 3)?;
        Some((usize::from(b[0]) << 10 ^ usize::from(b[1]) << 5 ^ usize::from(b[2])) & 0x7fff)
    }

    fn insert(&mut self, data: &[u8], i: usize) {
        if let Some(h) = Chains::hash(data, i) {
            self.prev[i] = self.head[h];
            self.head[h] = i;
        }
    }

    /// The longest earlier match for `data[i..]` (length, distance).
    fn longest_match(&self, data: &[u8], i: usize) -> (usize, usize) {
        let Some(h) = Chains::hash(data, i) else { return (0, 0) };
        let max = (data.len() - i).min(258);
        let (mut len, mut dist) = (0, 0);
        let mut cand = self.head[h];
        let mut budget = 512;
        while cand != NONE && i - cand <= 32768 && budget > 0 {
            let l = (0..max).take_while(|&k| data[cand + k] == data[i + k]).count();
            if l > len {
                (len, dist) = (l, i - cand);
                if l == max {
                    break;
                }
            }
            cand = self.prev[cand];
            budget -= 1;
        }
        (len, dist)
    }
}
