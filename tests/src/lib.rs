//! Support for the integration, conformance and macro UI tests of the worker framework: starting real
//! broker processes on free loopback ports, the ledger that proves nothing was lost, and the
//! conformance suite every backend runs.

pub mod brokers;
pub mod conformance;
pub mod worker_support;
