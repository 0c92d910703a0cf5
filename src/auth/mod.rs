//! Who may log in and what a login is worth: the users file with its
//! password hashes ([`users`]) and TOTP second factor ([`totp`]), sessions with rotating refresh tokens and
//! revocation ([`sessions`]), and the crash-safe state file ([`state_file`]).
//! All of it is plain data and functions; randomness and time are passed in.

pub mod sessions;
pub mod state_file;
pub mod totp;
pub mod users;
