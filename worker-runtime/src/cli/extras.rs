//! [`RunExtras`]: what a program hands [`run_with`](super::run_with) instead of what the command
//! line would build.

use std::fmt;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use worker_core::Broker;

use crate::auth::TokenVerifier;
use crate::credits::CreditLedger;
use crate::TaskDefinition;

/// What a program may hand [`run_with`](super::run_with) instead of what the command line would build.
#[derive(Default)]
pub struct RunExtras {
    pub(super) broker: Option<Arc<dyn Broker>>,
    pub(super) credit_ledger: Option<Arc<dyn CreditLedger>>,
    pub(super) verifier: Option<Arc<dyn TokenVerifier>>,
    pub(super) tasks: Option<Vec<TaskDefinition>>,
    pub(super) shutdown: Option<CancellationToken>,
    pub(super) no_signal_handlers: bool,
}

impl RunExtras {
    /// Nothing extra: everything comes from the command line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses this broker instead of connecting `--backend` (e.g. a memory broker the program also
    /// publishes to).
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Uses this credit ledger for db tasks that charge credits.
    pub fn credit_ledger(mut self, ledger: Arc<dyn CreditLedger>) -> Self {
        self.credit_ledger = Some(ledger);
        self
    }

    /// Uses this token verifier instead of one built from `--jwt-secret`/`--jwt-secret-file`.
    pub fn verifier(mut self, verifier: Arc<dyn TokenVerifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// Runs these tasks instead of [`registered_tasks`](crate::registered_tasks) (`--config` and
    /// `--tasks` still apply).
    pub fn tasks(mut self, tasks: Vec<TaskDefinition>) -> Self {
        self.tasks = Some(tasks);
        self
    }

    /// Stops the worker when this token is cancelled, besides on signals.
    pub fn shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = Some(token);
        self
    }

    /// Leaves SIGINT and SIGTERM alone (for a program that handles them itself and cancels the
    /// [`shutdown`](Self::shutdown) token).
    pub fn without_signal_handlers(mut self) -> Self {
        self.no_signal_handlers = true;
        self
    }
}

impl fmt::Debug for RunExtras {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunExtras")
            .field("broker", &self.broker.as_ref().map(|b| b.name()))
            .field("credit_ledger", &self.credit_ledger.is_some())
            .field("verifier", &self.verifier.is_some())
            .field("tasks", &self.tasks.as_ref().map(Vec::len))
            .field("shutdown", &self.shutdown.is_some())
            .field("signal_handlers", &!self.no_signal_handlers)
            .finish()
    }
}
