//! A strict JSON (RFC 8259) reader for the two objects in a token: the JOSE
//! header and the JWT claims.
//!
//! Both are flat objects of a dozen known members, read once per
//! verification, so this reader does only that: walk one object, hand each
//! member name to the caller, and let it read the value as the type it
//! expects (a string, a number, a bool, an array of strings) or skip it.
//! Typed reads write into the caller's slot and answer `false` for a value
//! of another type, which they still check and skip: a wrong type can then
//! be told apart from broken JSON, and no value travels through an
//! intermediate enum. Names are looked up where they stand in the input
//! (unless they contain escapes); nothing is allocated but the strings the
//! caller keeps.
//!
//! A text is accepted only if it is one well-formed JSON object in UTF-8:
//! the same texts serde_json accepts, with the same nesting limit (the tests
//! compare the two).

/// Deepest nesting of arrays and objects accepted, the top object
/// included (serde_json's limit).
const MAX_DEPTH: usize = 127;

/// The text is not one well-formed JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// A JSON number as claims need it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// An integer (no sign, fraction or exponent) that fits a u64.
    UInt(u64),
    /// Any other number: negative, with a fraction or exponent, or beyond
    /// u64 (infinite when beyond f64).
    Float(f64),
}

/// Bytes that may appear unescaped in a string, apart from `"` and `\`
/// (RFC 8259 §7: everything from U+0020 up).
const PLAIN: [bool; 256] = {
    let mut t = [true; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = false;
        i += 1;
    }
    t[b'"' as usize] = false;
    t[b'\\' as usize] = false;
    t
};

/// Walks one JSON object:
///
/// ```text
/// let mut r = Reader::new(bytes)?;
/// while let Some(member) = r.next_member(known)? { read or skip the value }
/// r.finish()?;
/// ```
pub struct Reader<'a> {
    text: &'a str,
    pos: usize,
    /// Whether the next member is the first of the object.
    first: bool,
}

impl<'a> Reader<'a> {
    /// Starts reading `bytes`, which must be UTF-8 (RFC 8259 §8.1) and open
    /// an object.
    pub fn new(bytes: &'a [u8]) -> Result<Reader<'a>, Malformed> {
        let text = std::str::from_utf8(bytes).map_err(|_| Malformed)?;
        let mut r = Reader {
            text,
            pos: 0,
            first: true,
        };
        r.expect(b'{')?;
        Ok(r)
    }

    /// The next member, or `None` at the closing `}`: `Some(known(name))`,
    /// where `known` tells the names the caller reads from the others. The
    /// caller must then read or skip the value.
    pub fn next_member<T>(&mut self, known: impl Fn(&str) -> Option<T>) -> Result<Option<Option<T>>, Malformed> {
        self.skip_ws();
        match (self.peek(), self.first) {
            (Some(b'}'), _) => {
                self.pos += 1;
                return Ok(None);
            }
            (Some(b','), false) => self.pos += 1,
            (_, false) => return Err(Malformed),
            (_, true) => self.first = false,
        }
        self.expect(b'"')?;
        let start = self.pos;
        self.skip_plain();
        let tag = if self.peek() == Some(b'"') {
            let name = self.text.get(start..self.pos).ok_or(Malformed)?;
            self.pos += 1;
            known(name)
        } else {
            // A name with escapes: look it up unescaped.
            let mut name = String::from(self.text.get(start..self.pos).ok_or(Malformed)?);
            self.string_rest(Some(&mut name))?;
            known(&name)
        };
        self.expect(b':')?;
        Ok(Some(tag))
    }

    /// Succeeds when nothing but whitespace follows the object.
    pub fn finish(mut self) -> Result<(), Malformed> {
        self.skip_ws();
        if self.pos == self.text.len() {
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    /// Checks a member value and forgets it.
    pub fn skip_value(&mut self) -> Result<(), Malformed> {
        self.skip_at(1)
    }

    /// A string value, which replaces the contents of `out`; `false` (and
    /// `out` untouched) for a value of another type.
    pub fn string_into(&mut self, out: &mut String) -> Result<bool, Malformed> {
        self.skip_ws();
        if self.peek() != Some(b'"') {
            self.skip_at(1)?;
            return Ok(false);
        }
        self.pos += 1;
        let start = self.pos;
        self.skip_plain();
        *out = String::from(self.text.get(start..self.pos).ok_or(Malformed)?);
        self.string_rest(Some(out))?;
        Ok(true)
    }

    /// A number value; `None` for a value of another type.
    pub fn number(&mut self) -> Result<Option<Number>, Malformed> {
        self.skip_ws();
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number_here().map(Some),
            _ => self.skip_at(1).map(|()| None),
        }
    }

    /// A `true` or `false` value; `None` for a value of another type.
    pub fn bool(&mut self) -> Result<Option<bool>, Malformed> {
        self.skip_ws();
        match self.peek() {
            Some(b't') => self.literal("true").map(|()| Some(true)),
            Some(b'f') => self.literal("false").map(|()| Some(false)),
            _ => self.skip_at(1).map(|()| None),
        }
    }

    /// An array of strings, appended to `out`, or with `or_one` a single
    /// string; `false` for a value of another type or an array holding a
    /// non-string (then `out` may hold part of the array).
    pub fn strings_into(&mut self, out: &mut Vec<String>, or_one: bool) -> Result<bool, Malformed> {
        self.skip_ws();
        match self.peek() {
            Some(b'"') if or_one => {
                let mut s = String::new();
                let ok = self.string_into(&mut s)?;
                out.push(s);
                return Ok(ok);
            }
            Some(b'[') => self.pos += 1,
            _ => return self.skip_at(1).map(|()| false),
        }
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(true);
        }
        let mut all_strings = true;
        loop {
            self.skip_ws();
            if all_strings && self.peek() == Some(b'"') {
                let mut s = String::new();
                self.string_into(&mut s)?;
                out.push(s);
            } else {
                all_strings = false;
                // Inside the array, itself inside the top object.
                self.skip_at(2)?;
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(all_strings);
                }
                _ => return Err(Malformed),
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), Malformed> {
        self.skip_ws();
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    fn literal(&mut self, word: &str) -> Result<(), Malformed> {
        match self.text.get(self.pos..) {
            Some(rest) if rest.starts_with(word) => {
                self.pos += word.len();
                Ok(())
            }
            _ => Err(Malformed),
        }
    }

    /// Any value inside a container at nesting `depth` (the top object is
    /// 1), checked and dropped. Numbers are read too, so a number that is
    /// not a number (`01`, `1.`, `-`) is refused here as well.
    fn skip_at(&mut self, depth: usize) -> Result<(), Malformed> {
        self.skip_ws();
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                self.skip_plain();
                self.string_rest(None)
            }
            Some(b'-' | b'0'..=b'9') => self.number_here().map(drop),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(open @ (b'[' | b'{')) => {
                if depth >= MAX_DEPTH {
                    return Err(Malformed);
                }
                self.pos += 1;
                let close = if open == b'[' { b']' } else { b'}' };
                self.skip_ws();
                if self.peek() == Some(close) {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    if open == b'{' {
                        self.expect(b'"')?;
                        self.skip_plain();
                        self.string_rest(None)?;
                        self.expect(b':')?;
                    }
                    self.skip_at(depth + 1)?;
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(c) if c == close => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return Err(Malformed),
                    }
                }
            }
            _ => Err(Malformed),
        }
    }

    /// Reads the rest of a string from its first byte that is not plain:
    /// escapes (decoded and appended to `out`, if any, with the plain runs
    /// between them) up to the closing quote.
    fn string_rest(&mut self, mut out: Option<&mut String>) -> Result<(), Malformed> {
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = self.escape()?;
                    if let Some(out) = out.as_deref_mut() {
                        out.push(c);
                    }
                }
                // A control character, or the end of the text.
                _ => return Err(Malformed),
            }
            let run = self.pos;
            self.skip_plain();
            if let Some(out) = out.as_deref_mut() {
                out.push_str(self.text.get(run..self.pos).ok_or(Malformed)?);
            }
        }
    }

    fn skip_plain(&mut self) {
        let bytes = self.text.as_bytes();
        let mut i = self.pos;
        while bytes.get(i).is_some_and(|&b| PLAIN[b as usize]) {
            i += 1;
        }
        self.pos = i;
    }

    /// The character of an escape whose backslash was just read
    /// (RFC 8259 §7); a UTF-16 surrogate must come in a pair.
    fn escape(&mut self) -> Result<char, Malformed> {
        let e = self.peek().ok_or(Malformed)?;
        self.pos += 1;
        Ok(match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4()?;
                let code = match hi {
                    0xd800..=0xdbff => {
                        self.literal("\\u")?;
                        let lo = self.hex4()?;
                        if !(0xdc00..=0xdfff).contains(&lo) {
                            return Err(Malformed);
                        }
                        0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                    }
                    0xdc00..=0xdfff => return Err(Malformed),
                    _ => hi,
                };
                char::from_u32(code).ok_or(Malformed)?
            }
            _ => return Err(Malformed),
        })
    }

    fn hex4(&mut self) -> Result<u32, Malformed> {
        let digits = self.text.get(self.pos..self.pos + 4).ok_or(Malformed)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Malformed);
        }
        self.pos += 4;
        u32::from_str_radix(digits, 16).map_err(|_| Malformed)
    }

    /// A number starting here (RFC 8259 §6):
    /// `-? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?`.
    fn number_here(&mut self) -> Result<Number, Malformed> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        // The integer part, and its value while it has at most 19 digits
        // (which always fit a u64).
        let int_start = self.pos;
        let int = match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                0
            }
            Some(b'1'..=b'9') => self.integer_digits(),
            _ => return Err(Malformed),
        };
        let int_digits = self.pos - int_start;
        let mut integer = !negative;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            integer = false;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.some_digits()?;
        }
        if integer {
            if int_digits <= 19 {
                return Ok(Number::UInt(int));
            }
            if let Some(u) = self.text.get(int_start..self.pos).and_then(|t| t.parse().ok()) {
                return Ok(Number::UInt(u));
            }
        }
        // The grammar above is a subset of what `f64::from_str` takes, and
        // that parse is correctly rounded; beyond f64 it gives infinity.
        let text = self.text.get(start..self.pos).ok_or(Malformed)?;
        text.parse().map(Number::Float).map_err(|_| Malformed)
    }

    /// Reads a run of digits and returns its value, which is exact when
    /// the run has at most 19 digits. Eight digits at a time when it can
    /// (timestamps have ten).
    fn integer_digits(&mut self) -> u64 {
        let bytes = self.text.as_bytes();
        let mut i = self.pos;
        let mut v = 0u64;
        while let Some(eight) = bytes.get(i..i + 8).and_then(|c| <[u8; 8]>::try_from(c).ok()) {
            let w = u64::from_le_bytes(eight);
            // All eight bytes in b'0'..=b'9' (each byte's high nibble is 3,
            // and adding 6 keeps it 3).
            let high = w & 0xf0f0_f0f0_f0f0_f0f0;
            let carried = w.wrapping_add(0x0606_0606_0606_0606) & 0xf0f0_f0f0_f0f0_f0f0;
            if high | carried >> 4 != 0x3333_3333_3333_3333 {
                break;
            }
            // Pairs, then quads, then all eight (first digit most significant).
            let w = (w & 0x0f0f_0f0f_0f0f_0f0f).wrapping_mul(10 << 8 | 1) >> 8;
            let w = (w & 0x00ff_00ff_00ff_00ff).wrapping_mul(100 << 16 | 1) >> 16;
            let w = (w & 0x0000_ffff_0000_ffff).wrapping_mul(10_000 << 32 | 1) >> 32;
            v = v.wrapping_mul(100_000_000).wrapping_add(w);
            i += 8;
        }
        while let Some(&d) = bytes.get(i).filter(|d| d.is_ascii_digit()) {
            v = v.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            i += 1;
        }
        self.pos = i;
        v
    }

    fn digits(&mut self) {
        let bytes = self.text.as_bytes();
        let mut i = self.pos;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        self.pos = i;
    }

    fn some_digits(&mut self) -> Result<(), Malformed> {
        let start = self.pos;
        self.digits();
        if self.pos > start { Ok(()) } else { Err(Malformed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member value as the typed reads see it.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Str(String),
        Num(Number),
        Bool(bool),
        Strs(Vec<String>),
        Other,
    }

    /// Reads a value with the typed read its first byte calls for.
    fn value(r: &mut Reader) -> Result<Seen, Malformed> {
        r.skip_ws();
        Ok(match r.peek() {
            Some(b'"') => {
                let mut s = String::new();
                assert!(r.string_into(&mut s)?);
                Seen::Str(s)
            }
            Some(b'-' | b'0'..=b'9') => Seen::Num(r.number()?.ok_or(Malformed)?),
            Some(b't' | b'f') => Seen::Bool(r.bool()?.ok_or(Malformed)?),
            Some(b'[') => {
                let mut v = Vec::new();
                if r.strings_into(&mut v, false)? {
                    Seen::Strs(v)
                } else {
                    Seen::Other
                }
            }
            _ => {
                r.skip_value()?;
                Seen::Other
            }
        })
    }

    /// The member names the tests use, each its own tag.
    fn known(name: &str) -> Option<&'static str> {
        ["s", "n", "u", "big", "t", "f", "z", "a", "m", "e", "o", "i", "sub"]
            .into_iter()
            .find(|n| *n == name)
    }

    /// Reads every member of `text`; names not [`known`] read as `?`.
    fn read(text: &str) -> Result<Vec<(&'static str, Seen)>, Malformed> {
        let mut r = Reader::new(text.as_bytes())?;
        let mut out = Vec::new();
        while let Some(tag) = r.next_member(known)? {
            out.push((tag.unwrap_or("?"), value(&mut r)?));
        }
        r.finish()?;
        Ok(out)
    }

    /// Skips every member of `text`.
    fn accepts(text: &[u8]) -> bool {
        let Ok(mut r) = Reader::new(text) else {
            return false;
        };
        loop {
            match r.next_member(|_| None::<()>) {
                Ok(Some(_)) if r.skip_value().is_ok() => {}
                Ok(None) => return r.finish().is_ok(),
                _ => return false,
            }
        }
    }

    #[test]
    fn rfc8259_values() {
        let v = read(
            r#" { "s" : "a\"b\\c\/\u00e9\ud83d\ude00\n" , "n":-1.5e2,"u":18446744073709551615,"big":18446744073709551616,
            "t":true,"f":false,"z":null,"a":["x","y"],"m":["x",1],"e":[],"o":{"k":[{}]}, "i": 0 } "#,
        )
        .unwrap();
        let want = [
            ("s", Seen::Str("a\"b\\c/é😀\n".into())),
            ("n", Seen::Num(Number::Float(-150.0))),
            ("u", Seen::Num(Number::UInt(u64::MAX))),
            ("big", Seen::Num(Number::Float(18446744073709551616.0))),
            ("t", Seen::Bool(true)),
            ("f", Seen::Bool(false)),
            ("z", Seen::Other),
            ("a", Seen::Strs(vec!["x".into(), "y".into()])),
            ("m", Seen::Other),
            ("e", Seen::Strs(vec![])),
            ("o", Seen::Other),
            ("i", Seen::Num(Number::UInt(0))),
        ];
        assert_eq!(v.len(), want.len());
        for ((n, v), (wn, wv)) in v.iter().zip(want) {
            assert_eq!((*n, v), (wn, &wv));
        }
        let names: Vec<_> = read(r#"{"\u0073ub":1,"su":1,"subs":1,"S\u0075b":1}"#)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["sub", "?", "?", "?"]);
        assert_eq!(read(r#"{"x":-0}"#).unwrap()[0].1, Seen::Num(Number::Float(0.0)));
        assert_eq!(
            read(r#"{"x":1e400}"#).unwrap()[0].1,
            Seen::Num(Number::Float(f64::INFINITY))
        );
        assert_eq!(read("{}").unwrap(), []);
    }

    /// A typed read of a value of another type says so, and skips it.
    #[test]
    fn typed_reads_skip_other_types() {
        let mut r = Reader::new(br#"{"a":[1,{"b":"c"}],"b":"x","c":1,"d":true,"e":["s",2],"f":"one"}"#).unwrap();
        let mut s = String::from("kept");
        let mut v = Vec::new();
        r.next_member(|_| None::<()>).unwrap();
        assert!(!r.string_into(&mut s).unwrap());
        r.next_member(|_| None::<()>).unwrap();
        assert_eq!(r.number().unwrap(), None);
        r.next_member(|_| None::<()>).unwrap();
        assert_eq!(r.bool().unwrap(), None);
        r.next_member(|_| None::<()>).unwrap();
        assert!(!r.strings_into(&mut v, true).unwrap());
        r.next_member(|_| None::<()>).unwrap();
        assert!(!r.strings_into(&mut v, false).unwrap());
        r.next_member(|_| None::<()>).unwrap();
        assert!(r.strings_into(&mut v, true).unwrap());
        assert_eq!(v.last().map(String::as_str), Some("one"));
        assert!(r.next_member(|_| None::<()>).unwrap().is_none());
        r.finish().unwrap();
        assert_eq!(s, "kept");
    }

    #[test]
    fn rfc8259_refusals() {
        for bad in [
            "",
            "[]",
            "\"s\"",
            "{",
            "{,}",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":+1}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a":NaN}"#,
            r#"{"a":tru}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\udc00\ud800"}"#,
            r#"{"a":"\ud800\u0041"}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":[1,]}"#,
            r#"{"a":{"b"}}"#,
            r#"{"a":1} x"#,
            r#"{"a":1}{}"#,
            "{'a':1}",
        ] {
            assert!(read(bad).is_err(), "{bad:?}");
            assert!(!accepts(bad.as_bytes()), "{bad:?}");
        }
        assert!(!accepts(b"{\"a\":\"\xff\"}"));
        let deep = |n: usize| format!(r#"{{"a":{}1{}}}"#, "[".repeat(n), "]".repeat(n));
        assert!(accepts(deep(126).as_bytes()));
        assert!(!accepts(deep(127).as_bytes()));
    }

    /// Numbers agree with `str::parse`, 8-digit groups included.
    #[test]
    fn rfc8259_6_numbers_agree_with_std() {
        let mut x = 0x9e3779b97f4a7c15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = 1 + (rnd() % 25) as usize;
            let mut t: String = (0..len).map(|_| char::from(b'0' + (rnd() % 10) as u8)).collect();
            if t.len() > 1 && t.starts_with('0') {
                t.replace_range(..1, "7");
            }
            if rnd() % 4 == 0 {
                t.push_str(".5");
            }
            let text = format!(r#"{{"n":{t},"next":1}}"#);
            let mut r = Reader::new(text.as_bytes()).unwrap();
            r.next_member(|_| None::<()>).unwrap();
            let got = r.number().unwrap().unwrap();
            let want = match t.parse::<u64>() {
                Ok(u) => Number::UInt(u),
                Err(_) => Number::Float(t.parse().unwrap()),
            };
            assert_eq!(got, want, "{t}");
            assert!(r.next_member(|_| None::<()>).unwrap().is_some());
        }
    }

    /// Random texts near valid JSON: this reader accepts exactly what
    /// serde_json accepts as a JSON object (leaving aside numbers beyond f64,
    /// which serde_json refuses and this reader leaves to the type checks).
    #[test]
    fn agrees_with_serde_json() {
        let seeds = [
            r#"{"sub":"agent-7","exp":1700000000,"aud":["a","b"],"x":{"y":[1,2.5e-3,null]},"p":true}"#,
            r#" { "k\n" : "v\u00e9\ud83d\ude00" , "n" : -0.25E+2 , "f":false } "#,
            r#"{"":[[],{}],"z":"\"\\\/\b\f\n\r\t"}"#,
        ];
        let noise = b"{}[]\",:0123456789.eE+-\\ tfnu\x01\xc3\xa9a";
        let mut x = 0x853c49e6748fea9bu64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut agreed_ok = 0;
        for i in 0..30_000 {
            let mut t = seeds[i % seeds.len()].as_bytes().to_vec();
            for _ in 0..1 + rnd() % 3 {
                let at = (rnd() % (t.len() as u64 + 1)) as usize;
                let b = noise[(rnd() % noise.len() as u64) as usize];
                match rnd() % 3 {
                    0 if at < t.len() => t[at] = b,
                    1 if at < t.len() => drop(t.remove(at)),
                    _ => t.insert(at, b),
                }
            }
            let theirs = match serde_json::from_slice::<serde_json::Value>(&t) {
                Ok(v) => v.is_object(),
                Err(e) if e.to_string().starts_with("number out of range") => continue,
                Err(_) => false,
            };
            assert_eq!(accepts(&t), theirs, "{:?}", String::from_utf8_lossy(&t));
            agreed_ok += usize::from(theirs);
        }
        // The mutations must leave a fair share of valid texts to compare.
        assert!(agreed_ok > 3_000, "{agreed_ok}");
    }
}
