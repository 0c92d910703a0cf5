//! `users_file`: arbitrary text through the users-file parser that `serve
//! --users`, SIGHUP and `useradd` call. A file that parses must render back
//! to text that parses to the same users; no hash may reach `Debug`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::auth::users::UsersFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(file) = UsersFile::parse(text) else { return };
    let again = UsersFile::parse(&file.render()).expect("a rendered users file parses");
    assert_eq!(again, file, "render/parse round trip changed the file");
    for u in file.users() {
        let phc = u.hash.to_phc();
        assert!(!format!("{u:?}").contains(&phc), "hash in Debug output");
        assert!(tessera::auth::users::name_ok(&u.name));
    }
});
