//! `bridge [--route NAME]…`: runs the routes of the `[bridge]` section of `--config` until a
//! shutdown signal, serving `/metrics` like a worker. `bridge replay ROUTE --from POSITION
//! [--dry-run] [--limit N]` forwards a route's history again and exits.

use std::time::Duration;

use super::args::{BridgeAction, BridgeArgs, Cli};
use super::error::CliError;
use super::extras::RunExtras;
use super::Service;
use crate::bridge::{replay_route, Bridge, BridgeConfig, ReplayFrom, ReplayOptions};

/// A replay ends when nothing arrives for this long.
const REPLAY_QUIET: Duration = Duration::from_secs(3);

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
    if let Some(BridgeAction::Replay(replay)) = &args.action {
        let options = ReplayOptions {
            dry_run: replay.dry_run,
            limit: replay.limit,
            quiet: REPLAY_QUIET,
            consumer: consumer_name,
        };
        let from: ReplayFrom = match replay.from.parse() {
            Ok(from) => from,
            Err(never) => match never {},
        };
        let report = replay_route(&config, &replay.route, &from, &options).await?;
        if let ReplayFrom::MessageId(id) = &from {
            if !report.position_found {
                println!("message {id} was not found; nothing forwarded");
            }
        }
        let verb = if report.dry_run {
            "would forward"
        } else {
            "forwarded"
        };
        println!(
            "route {}: {verb} {} message(s), skipped {} before the position, refused {}",
            replay.route, report.forwarded, report.skipped, report.refused
        );
        return Ok(());
    }
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
