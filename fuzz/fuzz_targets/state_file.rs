//! `state_file`: arbitrary text through the state-file parser `serve
//! --state` calls at start. A state that parses must serialise to an
//! equivalent state (SPEC §6: never silently changed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::auth::sessions::Sessions;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(state) = Sessions::from_json(text) else { return };
    let again = Sessions::from_json(&state.to_json()).expect("a serialised state parses");
    assert_eq!(again, state, "serialise/parse round trip changed the state");
});
