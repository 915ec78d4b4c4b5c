//! Scaling out with real processes on Apache Pulsar: three copies of the `scale_worker` example
//! share the task's shared subscription on a Pulsar standalone of this test binary's own (the
//! scenarios are in [`integration_tests::scale_out`]).
//!
//! - With nothing failing, 10,000 messages are handled exactly once each, the load is split
//!   between the three, and each process's `/metrics` shows its share; SIGTERM stops all three
//!   with status 0.
//! - With one worker killed (SIGKILL) mid-stream and restarted under the same name, nothing is
//!   lost; messages it handled but had not acknowledged are redelivered and handled again
//!   (printed, allowed).
//!
//! Both tests use the one standalone of this binary ([`PulsarStandalone::shared`]): the second
//! kills a worker, not the broker. Without Java or Maven the tests skip loudly (they fail with
//! `REQUIRE_BROKERS=1`).

use integration_tests::brokers::PulsarStandalone;
use integration_tests::scale_out::{self, Backend, TOPIC};
use worker_runtime::broker::pulsar::{PulsarBroker, PulsarOptions};

#[test]
fn three_worker_processes_share_the_work_and_handle_each_message_once() {
    let Some(backend) = pulsar() else {
        return;
    };
    scale_out::work_is_shared_and_each_message_handled_once(backend);
}

#[test]
fn a_killed_worker_restarted_under_its_name_loses_nothing() {
    let Some(backend) = pulsar() else {
        return;
    };
    scale_out::a_killed_worker_restarted_under_its_name_loses_nothing(backend);
}

/// The workers' flags for the shared standalone, and a publisher connected to it, with the
/// tenant and namespace of the task's topic created; `None` to skip.
fn pulsar() -> Option<Backend> {
    let standalone = PulsarStandalone::shared()?;
    standalone.ensure_namespace_of(TOPIC);
    let url = standalone.url();
    let args = ["--backend", "pulsar", "--pulsar-host", &url];
    Some(Backend::new(
        "pulsar",
        &args,
        PulsarBroker::connect(PulsarOptions::new(&url)),
    ))
}
