//! Stand-ins, with the same shape, for the parts of the runtime the command line starts but that
//! are not in this crate yet: the worker, the HS256 verifier and the memory broker. Each fails
//! plainly ("worker not linked"). When the real parts land this file is deleted and the `use` lines
//! in `cli/mod.rs` and `cli/backend.rs` point at them instead; the call sites stay as they are.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use worker_core::Broker;

use super::error::CliError;
use crate::auth::{AuthError, Principal, Secret, TokenVerifier};
use crate::credits::CreditLedger;
use crate::metrics::Metrics;
use crate::TaskDefinition;

/// Stands in for `crate::worker::Worker`.
pub(super) struct Worker;

/// Stands in for the worker's builder: takes every input and builds a worker that cannot run.
#[derive(Default)]
pub(super) struct WorkerBuilder;

/// Stands in for `crate::worker::WorkerReport`.
#[derive(Debug)]
pub(super) struct WorkerReport;

/// Stands in for `crate::worker::WorkerError`.
#[derive(Debug, thiserror::Error)]
#[error("worker not linked")]
pub(super) struct WorkerError;

impl Worker {
    pub(super) fn builder() -> WorkerBuilder {
        WorkerBuilder
    }

    pub(super) async fn run(
        self,
        _shutdown: CancellationToken,
    ) -> Result<WorkerReport, WorkerError> {
        Err(WorkerError)
    }
}

impl WorkerBuilder {
    pub(super) fn broker(self, _broker: Arc<dyn Broker>) -> Self {
        self
    }
    pub(super) fn tasks(self, _tasks: Vec<TaskDefinition>) -> Self {
        self
    }
    pub(super) fn consumer_name(self, _name: String) -> Self {
        self
    }
    pub(super) fn verifier(self, _verifier: Arc<dyn TokenVerifier>) -> Self {
        self
    }
    pub(super) fn credit_ledger(self, _ledger: Arc<dyn CreditLedger>) -> Self {
        self
    }
    pub(super) fn metrics(self, _metrics: Metrics) -> Self {
        self
    }
    pub(super) fn shutdown_grace(self, _grace: Duration) -> Self {
        self
    }
    pub(super) fn build(self) -> Result<Worker, WorkerError> {
        Ok(Worker)
    }
}

/// Stands in for `crate::auth::Hs256Verifier`; refuses every token.
pub(super) struct Hs256Verifier;

impl Hs256Verifier {
    pub(super) fn new(_secret: Secret) -> Self {
        Hs256Verifier
    }
}

impl TokenVerifier for Hs256Verifier {
    fn verify(&self, _token: &str) -> Result<Principal, AuthError> {
        Err(AuthError::BadSignature)
    }
}

/// Stands in for `Arc::new(crate::broker::memory::MemoryBroker::new())`.
pub(super) fn memory_broker() -> Result<Arc<dyn Broker>, CliError> {
    Err(CliError::NotLinked("memory broker"))
}
