//! Support for the integration and conformance tests of the worker framework: starting real
//! broker processes on free loopback ports, the ledger that proves nothing was lost, and the
//! conformance suite every backend runs.

pub mod brokers;
pub mod conformance;
pub mod counting;
pub mod processes;
pub mod python;
pub mod scale_out;
pub mod worker_support;
