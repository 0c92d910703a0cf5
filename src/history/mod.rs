//! Channel history (SPEC §10).

pub mod disk;
