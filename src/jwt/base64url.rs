//! Strict unpadded base64url (RFC 4648 §5, as RFC 7515 §2 uses it), decode
//! only: the hot path of every verification.
//!
//! Strict means exactly one text per byte string: no padding, no `+` or `/`,
//! no whitespace, no length ≡ 1 (mod 4), and the unused low bits of the last
//! character must be zero (RFC 4648 §3.5, "canonical encoding"). The base64
//! crate enforces the same rules; this decoder exists because it is a table
//! lookup per character, writes into a buffer the caller owns (the stack,
//! for a signature) and checks validity once per segment instead of per
//! character.

/// Marks a byte outside the alphabet in [`VALUE`]; any value with bit 7 set.
const INVALID: u8 = 0xff;

/// The 6-bit value of each alphabet byte, [`INVALID`] for every other byte.
const VALUE: [u8; 256] = {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        t[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Marks an invalid byte in the [`SHIFTED`] tables: a bit no value reaches.
const INVALID_BIT: u32 = 1 << 31;

/// [`VALUE`] shifted to its place in a 24-bit group, one table per position
/// in a 4-character quad, so a quad decodes with four lookups and three ORs.
const SHIFTED: [[u32; 256]; 4] = {
    let mut t = [[INVALID_BIT; 256]; 4];
    let mut pos = 0;
    while pos < 4 {
        let mut b = 0;
        while b < 256 {
            if VALUE[b] != INVALID {
                t[pos][b] = (VALUE[b] as u32) << (18 - 6 * pos);
            }
            b += 1;
        }
        pos += 1;
    }
    t
};

/// The text is not strict unpadded base64url.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

/// How many bytes `len` characters decode to, or `None` for a length no
/// encoding has (≡ 1 mod 4).
pub fn decoded_len(len: usize) -> Option<usize> {
    match len % 4 {
        0 => Some(len / 4 * 3),
        2 => Some(len / 4 * 3 + 1),
        3 => Some(len / 4 * 3 + 2),
        _ => None,
    }
}

/// Decodes `src` into `out`, which must be exactly `decoded_len(src.len())`
/// bytes long (anything else is [`Invalid`]). On error `out` holds garbage.
pub fn decode_into(src: &[u8], out: &mut [u8]) -> Result<(), Invalid> {
    if decoded_len(src.len()) != Some(out.len()) {
        return Err(Invalid);
    }
    // OR of every quad's group: INVALID_BIT is set iff some byte was invalid.
    let mut seen = 0u32;
    let [t0, t1, t2, t3] = &SHIFTED;
    let mut quads = src.chunks_exact(4);
    let mut o = 0;
    for q in &mut quads {
        if let [a, b, c, d] = q {
            let n = t0[*a as usize] | t1[*b as usize] | t2[*c as usize] | t3[*d as usize];
            seen |= n;
            // One 4-byte store per quad; its last byte is overwritten by
            // the next quad, and the last quad stores only 3.
            let group = (n << 8).to_be_bytes();
            match out.get_mut(o..o + 4) {
                Some(dst) => dst.copy_from_slice(&group),
                None => {
                    if let (Some(dst), Some(src)) = (out.get_mut(o..o + 3), group.get(..3)) {
                        dst.copy_from_slice(src);
                    }
                }
            }
            o += 3;
        }
    }
    let mut seen = if seen & INVALID_BIT != 0 { INVALID } else { 0 };
    // The last 2 or 3 characters carry 1 or 2 bytes; the bits they carry
    // beyond those must be zero.
    match (quads.remainder(), out.get_mut(o..).unwrap_or_default()) {
        ([], []) => {}
        ([a, b], [x]) => {
            let (a, b) = (VALUE[*a as usize], VALUE[*b as usize]);
            seen |= a | b;
            if b & 0x0f != 0 {
                return Err(Invalid);
            }
            *x = a << 2 | b >> 4;
        }
        ([a, b, c], [x, y]) => {
            let (a, b, c) = (VALUE[*a as usize], VALUE[*b as usize], VALUE[*c as usize]);
            seen |= a | b | c;
            if c & 0x03 != 0 {
                return Err(Invalid);
            }
            *x = a << 2 | b >> 4;
            *y = b << 4 | c >> 2;
        }
        _ => return Err(Invalid),
    }
    if seen & 0x80 != 0 { Err(Invalid) } else { Ok(()) }
}

/// Whether `src` is strict unpadded base64url, without keeping the bytes.
pub fn is_valid(src: &[u8]) -> bool {
    let Some(n) = decoded_len(src.len()) else {
        return false;
    };
    // Whole quads cannot be non-canonical; only the tail needs decoding.
    let whole = src.len() - src.len() % 4;
    let (body, tail) = src.split_at(whole);
    let mut out = [0u8; 2];
    body.iter().all(|&b| VALUE[b as usize] != INVALID)
        && out
            .get_mut(..n - whole / 4 * 3)
            .is_some_and(|o| decode_into(tail, o).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn decode(s: &[u8]) -> Result<Vec<u8>, Invalid> {
        let mut out = vec![0; decoded_len(s.len()).ok_or(Invalid)?];
        decode_into(s, &mut out)?;
        assert!(is_valid(s));
        Ok(out)
    }

    #[test]
    fn rfc4648_10_test_vectors_unpadded() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(decode(enc.as_bytes()).unwrap(), plain.as_bytes(), "{enc}");
        }
        assert_eq!(decode(b"-_-_").unwrap(), [0xfb, 0xff, 0xbf]);
    }

    #[test]
    fn rfc4648_3_strictness() {
        for bad in [
            "Zg==", "Zm8=", "Z", "Zm9vY", "+/+/", "Zm9v Yg", "Zm9v\nYg", " Zm9v", "Zm9v.", "Zh", "Zm9", "Zm-",
        ] {
            assert_eq!(decode(bad.as_bytes()), Err(Invalid), "{bad:?}");
            assert!(!is_valid(bad.as_bytes()), "{bad:?}");
        }
        assert_eq!(decode_into(b"Zm9v", &mut [0; 2]), Err(Invalid));
        assert!(decode(&[b'Z', b'm', 0x80, b'v']).is_err());
    }

    /// Every input agrees with the base64 crate's strict engine, byte for byte.
    #[test]
    fn agrees_with_the_base64_crate() {
        let mut x = 0x2545f4914f6cdd1du64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/= .";
        for _ in 0..20_000 {
            let len = (rnd() % 12) as usize;
            let s: Vec<u8> = (0..len)
                .map(|_| {
                    let r = rnd();
                    // Mostly alphabet bytes, sometimes anything.
                    if r % 16 == 0 {
                        (r >> 8) as u8
                    } else {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    }
                })
                .collect();
            let ours = decode(&s).ok();
            assert_eq!(ours, URL_SAFE_NO_PAD.decode(&s).ok(), "{s:?}");
            assert_eq!(is_valid(&s), ours.is_some(), "{s:?}");
        }
        for len in 0..100 {
            let bytes: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            assert_eq!(decode(URL_SAFE_NO_PAD.encode(&bytes).as_bytes()).unwrap(), bytes);
        }
    }
}
