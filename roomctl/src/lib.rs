//! `roomctl`: the operator CLI over the Admin API ([`admin`]), the load
//! generator ([`bench`](mod@bench), with [`cold`] for rooms loaded from Redis) and a dev
//! token minter ([`token`]); [`cli`] is its command line.
#![forbid(unsafe_code)]

pub mod admin;
pub mod bench;
pub mod cli;
pub mod cold;
pub mod token;
