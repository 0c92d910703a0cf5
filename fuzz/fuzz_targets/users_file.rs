//! `users_file`: arbitrary text through the users-file parser that `serve
//! --users`, SIGHUP and `useradd` call. A file that parses must render back
//! to text that parses to the same users; no hash or TOTP secret may reach
//! `Debug`, and a parsed secret goes through the TOTP check without harm.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::auth::users::{User, UsersFile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(file) = UsersFile::parse(text) else { return };
    let again = UsersFile::parse(&file.render()).expect("a rendered users file parses");
    assert_eq!(again, file, "render/parse round trip changed the file");
    for u in file.users() {
        // The name and channels are public and printed as written; a name
        // may even spell out its own hash (fuzz/regressions/users_file/
        // name-spells-its-hash). Everything else must stay redacted.
        let phc = u.hash.to_phc();
        let digest = phc.rsplit('$').next().unwrap_or_default();
        let rest = User {
            name: String::new(),
            channels: Vec::new(),
            ..u.clone()
        };
        let shown = format!("{rest:?}");
        assert!(
            !shown.contains(&phc) && !shown.contains(digest),
            "hash in Debug output: {shown}"
        );
        if let Some(secret) = &u.totp {
            let b32 = secret.to_base32();
            assert!(!shown.contains(&b32), "TOTP secret in Debug output: {shown}");
            assert!(u.to_line().ends_with(&format!(":totp:{b32}")));
            let now = u64::from(u.clearance).wrapping_mul(30);
            let code = secret.code_at(tessera::auth::totp::step_of(now));
            assert_eq!(tessera::auth::totp::check(secret, &code, now, None), Some(now / 30));
        }
        assert!(tessera::auth::users::name_ok(&u.name));
    }
});
