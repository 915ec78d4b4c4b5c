//! The Valkey flags, and connecting with them.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use worker_core::Broker;

use super::super::args::positive_duration;
use crate::cli::CliError;

/// How to reach a Valkey (or Redis) server. The URL may hold a password; `Debug` output and logs
/// show it as `***`.
#[derive(Args, Clone)]
#[command(next_help_heading = "Valkey (--backend valkey)")]
pub struct ValkeyArgs {
    /// The server: `redis://[[user]:password@]host:port[/db]`, or `rediss://…` for TLS. A
    /// password in it is never printed.
    #[arg(
        id = "valkey_url",
        long = "valkey-url",
        env = "VALKEY_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379",
        value_name = "URL"
    )]
    pub url: String,

    /// How long a message may stay unacknowledged at a worker that stopped renewing its lease
    /// (a dead one) before a live worker takes it over.
    #[arg(
        id = "valkey_visibility_timeout",
        long = "valkey-visibility-timeout",
        env = "VALKEY_VISIBILITY_TIMEOUT",
        default_value = "30s",
        value_name = "DURATION",
        value_parser = positive_duration
    )]
    pub visibility_timeout: Duration,

    /// For `rediss://`: a PEM file of the certificate authority to trust instead of the system's
    /// roots.
    #[arg(
        id = "valkey_tls_ca_file",
        long = "valkey-tls-ca-file",
        env = "VALKEY_TLS_CA_FILE",
        value_name = "PATH"
    )]
    pub tls_ca_file: Option<PathBuf>,
}

impl fmt::Debug for ValkeyArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValkeyArgs")
            .field("url", &super::redact_url(&self.url))
            .field("visibility_timeout", &self.visibility_timeout)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

#[cfg(feature = "valkey")]
impl ValkeyArgs {
    /// The backend options these flags describe.
    pub fn options(&self) -> crate::broker::valkey::ValkeyOptions {
        crate::broker::valkey::ValkeyOptions {
            tls_ca_file: self
                .tls_ca_file
                .clone()
                .filter(|path| !path.as_os_str().is_empty()),
            visibility_timeout: self.visibility_timeout,
            ..crate::broker::valkey::ValkeyOptions::new(self.url.trim())
        }
    }
}

/// Connects to the server the flags name.
#[cfg(feature = "valkey")]
pub(super) async fn connect(args: &ValkeyArgs) -> Result<Arc<dyn Broker>, CliError> {
    let options = args.options();
    let url = options.url.clone();
    tracing::info!(url = %super::redact_url(&url), "connecting to valkey");
    match crate::broker::ValkeyBroker::connect(options).await {
        Ok(broker) => Ok(Arc::new(broker)),
        Err(source) => Err(super::connect_error(
            super::BackendKind::Valkey,
            &url,
            source,
        )),
    }
}

/// Without the `valkey` feature there is nothing to connect.
#[cfg(not(feature = "valkey"))]
pub(super) async fn connect(_: &ValkeyArgs) -> Result<Arc<dyn Broker>, CliError> {
    Err(CliError::BackendNotCompiled("valkey"))
}
