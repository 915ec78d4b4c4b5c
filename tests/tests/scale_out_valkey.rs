//! Scaling out with real processes on Valkey: three copies of the `scale_worker` example share
//! one subscription on a `redis-server` that each test starts itself (the scenarios are in
//! [`integration_tests::scale_out`]).
//!
//! - With nothing failing, 10,000 messages are handled exactly once each, the load is split
//!   between the three, and each process's `/metrics` shows its share; SIGTERM stops all three
//!   with status 0.
//! - With one worker killed (SIGKILL) mid-stream and restarted under the same name, nothing is
//!   lost; messages it handled but had not acknowledged are handled again (printed, allowed).
//!
//! Without `redis-server` the tests skip loudly (they fail with `REQUIRE_BROKERS=1`).

use integration_tests::brokers::RedisServer;
use integration_tests::scale_out::{self, Backend};
use worker_runtime::broker::valkey::{ValkeyBroker, ValkeyOptions};

#[test]
fn three_worker_processes_share_the_work_and_handle_each_message_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    scale_out::work_is_shared_and_each_message_handled_once(valkey(&server, &[]));
}

#[test]
fn a_killed_worker_restarted_under_its_name_loses_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // A short visibility timeout bounds the wait should the restarted worker not recover its own
    // pending messages; the live workers would then take them over.
    let extra = ["--valkey-visibility-timeout", "5s"];
    scale_out::a_killed_worker_restarted_under_its_name_loses_nothing(valkey(&server, &extra));
}

/// The workers' flags for `server`, with `extra` ones, and a publisher connected to it.
fn valkey(server: &RedisServer, extra: &[&str]) -> Backend {
    let url = server.url();
    let mut args = vec!["--backend", "valkey", "--valkey-url", &url];
    args.extend(extra);
    Backend::new(
        "valkey",
        &args,
        ValkeyBroker::connect(ValkeyOptions::new(&url)),
    )
}
