//! `broker_payload`: arbitrary bytes as if Redis handed them to a cluster
//! node (cargo feature `cluster`). The `redis` crate reads the RESP bytes;
//! this target covers what tessera makes of what it gets: the bytes as a
//! broadcast payload (`decode_pub`, `decode_revocation`), as a stored
//! history entry (`decode_entry`), and, split at newlines into bulk strings
//! (a piece `:N` is an integer), as the publish and read scripts' replies
//! (`decode_published`, `decode_snapshot`).
//!
//! Oracle: nothing panics; whatever parses re-encodes to a payload that
//! parses to the same; a snapshot's entries ascend and none is past its
//! last offset; a published offset is never 0.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::broker::redis::{
    Value, decode_entry, decode_pub, decode_published, decode_revocation, decode_snapshot, encode_entry, encode_pub,
};

fuzz_target!(|data: &[u8]| {
    let _ = decode_revocation(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(p) = decode_pub(text) {
            assert_eq!(decode_pub(&encode_pub(&p)), Some(p));
        }
        if let Some(e) = decode_entry(text) {
            assert_eq!(decode_entry(&encode_entry(&e)), Some(e));
        }
    }
    let reply = Value::Array(
        data.split(|&b| b == b'\n')
            .map(|piece| {
                match piece
                    .strip_prefix(b":")
                    .and_then(|n| std::str::from_utf8(n).ok()?.parse::<i64>().ok())
                {
                    Some(n) => Value::Int(n),
                    None => Value::BulkString(piece.to_vec()),
                }
            })
            .collect(),
    );
    if let Some((_, offset)) = decode_published(&reply) {
        assert!(offset > 0);
    }
    if let Some(s) = decode_snapshot(&reply) {
        assert!(s.entries.windows(2).all(|w| w[0].offset < w[1].offset));
        assert!(s.entries.iter().all(|e| e.offset <= s.last));
    }
});
