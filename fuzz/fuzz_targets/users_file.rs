//! `users_file`: arbitrary text through the users-file parser that `serve
//! --users`, SIGHUP and `useradd` call. A file that parses must render back
//! to text that parses to the same users; no hash may reach `Debug`.
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
        assert!(tessera::auth::users::name_ok(&u.name));
    }
});
