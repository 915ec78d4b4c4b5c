//! Support for the integration, conformance and macro UI tests of the worker framework: starting real
//! broker processes on free loopback ports, and the ledger that proves nothing was lost.

pub mod brokers;
pub mod processes;
pub mod worker_support;
