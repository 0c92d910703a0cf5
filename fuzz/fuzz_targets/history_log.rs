//! `history_log`: arbitrary bytes through the history record reader that
//! `serve --history-dir` runs at start (`history::disk::decode`, which
//! `Log::open` uses to find where a torn or damaged tail begins).
//!
//! Oracle: decoding never panics; the valid prefix re-encodes to exactly the
//! same bytes (the format is canonical, so nothing read is silently
//! changed); `problem` is set exactly when bytes were left over; and the
//! prefix decodes alone to the same records (a cut never loses what came
//! before it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::history::disk::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let d = decode(data);
    assert!(d.valid_len <= data.len());
    assert_eq!(
        d.problem.is_some(),
        d.valid_len < data.len(),
        "problem iff a tail was left"
    );
    let mut again = Vec::with_capacity(d.valid_len);
    for r in &d.records {
        encode(r.as_ref(), &mut again);
    }
    assert_eq!(&again[..], &data[..d.valid_len], "re-encoding changed the bytes");
    let prefix = decode(&data[..d.valid_len]);
    assert_eq!(prefix.records, d.records);
    assert_eq!(prefix.problem, None);
});
