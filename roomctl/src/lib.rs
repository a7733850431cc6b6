//! `roomctl`: the operator CLI over the Admin API ([`admin`]) and the load
//! generator ([`bench`]); [`cli`] is its command line.
#![forbid(unsafe_code)]

pub mod admin;
pub mod bench;
pub mod cli;
