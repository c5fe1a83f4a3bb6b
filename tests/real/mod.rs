//! Tests against a real Asterisk 22 built from source (crates/asterisk-real),
//! with sipp as the phones: the seed's flow end to end through `serve` and
//! the HTTP API, faults, and contract tests that run one body on the
//! stand-in and on the real Asterisk; and a real softphone (baresip), also
//! behind NAT in network namespaces (`phones.rs`); and `apply.target: ari`
//! on an Asterisk with the astdb sorcery wizard (`live.rs`); one daemon on
//! three Asterisk servers (`nodes.rs`); `apply.target: realtime` on an
//! Asterisk reading PostgreSQL, and three on one database (`realtime.rs`);
//! the harness's own process handling (`harness.rs`). Under CI=true a missing
//! Asterisk, sipp, baresip or network namespaces fails them; locally they
//! print SKIPPED.

mod adopt;
mod calls;
mod contract;
mod e2e;
mod faults;
mod handover;
mod harness;
mod leader;
mod live;
mod nodes;
mod options;
mod phones;
mod profiles;
mod realtime;
mod status;

// The harness (a daemon on a real Asterisk, waits, Asterisk's own view) is
// in tests/support/real.rs.
pub(crate) use crate::support::real::*;
