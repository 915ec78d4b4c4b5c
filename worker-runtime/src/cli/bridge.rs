//! `bridge [--route NAME]…`: runs the routes of the `[bridge]` section of `--config` until a
//! shutdown signal, serving `/metrics` like a worker.

use super::args::{BridgeArgs, Cli};
use super::error::CliError;
use super::extras::RunExtras;
use super::Service;
use crate::bridge::{Bridge, BridgeConfig};

/// Reads the configuration, connects the routes' brokers and forwards until shut down.
pub(super) async fn run(cli: &Cli, args: &BridgeArgs, extras: &RunExtras) -> anyhow::Result<()> {
    let Some(path) = &cli.config else {
        return Err(CliError::BridgeNeedsConfig.into());
    };
    let text = std::fs::read_to_string(path).map_err(|source| CliError::ReadConfig {
        path: path.clone(),
        source,
    })?;
    let config = BridgeConfig::parse(&text, &path.display().to_string())?;
    let consumer_name = cli.consumer_name();
    let service = Service::start(cli, &consumer_name, extras).await?;
    let shutdown = service.shutdown.clone();
    let result = async {
        let bridge = tokio::select! {
            bridge = Bridge::from_config(&config, &args.routes, &consumer_name, &service.metrics) => bridge?,
            () = shutdown.cancelled() => {
                tracing::info!("shut down before the bridge's brokers were connected");
                return Ok(());
            }
        };
        tracing::info!(consumer = %consumer_name, routes = %bridge.route_names().join(","), "starting bridge");
        service.metrics.set_ready(true);
        let reports = bridge.run(shutdown.clone(), cli.shutdown_grace).await;
        tracing::info!(?reports, "bridge stopped");
        anyhow::Ok(())
    }
    .await;
    service.finish().await;
    result
}
