//! `broker_reply`: arbitrary bytes as if Redis sent them to a cluster node
//! (cargo feature `cluster`): the RESP reader (`broker::redis::decode`),
//! then what the node makes of a reply (`decode_snapshot`,
//! `decode_published`) and of a broadcast payload (`decode_pub`,
//! `decode_revocation`).
//!
//! Oracle: nothing panics or allocates a claimed huge length; a decoded
//! reply used at most the bytes given, decodes the same from exactly those
//! bytes, and one byte fewer is "need more" (never a different reply); a
//! broadcast that parses re-encodes to a payload that parses to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::broker::redis::{decode, decode_pub, decode_published, decode_revocation, decode_snapshot, encode_pub};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((v, used))) = decode(data) {
        assert!(used > 0 && used <= data.len());
        assert_eq!(decode(&data[..used]), Ok(Some((v.clone(), used))));
        assert_eq!(decode(&data[..used - 1]), Ok(None));
        let _ = decode_snapshot(&v);
        let _ = decode_published(&v);
    }
    let _ = decode_revocation(data);
    if let Ok(text) = std::str::from_utf8(data)
        && let Some(p) = decode_pub(text)
    {
        assert_eq!(decode_pub(&encode_pub(&p)), Some(p));
    }
});
