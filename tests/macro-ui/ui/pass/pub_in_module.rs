//! Tasks of every visibility inside modules: the generated module's items are exactly as visible
//! as the fn.
#![deny(warnings, missing_docs)]

//! Tasks in modules.

use worker_runtime::prelude::*;

/// Tasks.
pub mod tasks {
    /// More tasks.
    pub mod inner {
        use worker_runtime::prelude::*;

        /// A public task.
        #[pulsar_io_task(topic = "persistent://t/ns/public")]
        pub async fn public_task(payload: String) -> Result<String, TaskError> {
            Ok(payload)
        }

        #[pulsar_io_task(topic = "persistent://t/ns/parent")]
        pub(super) async fn parent_task(payload: u32) -> Result<(), TaskError> {
            let _ = payload;
            Ok(())
        }

        #[pulsar_io_task(topic = "persistent://t/ns/crate")]
        pub(crate) async fn crate_task(payload: u32) -> Result<(), TaskError> {
            let _ = payload;
            Ok(())
        }

        #[pulsar_io_task(topic = "persistent://t/ns/in-path")]
        pub(in crate::tasks) async fn path_task(payload: u32) -> Result<(), TaskError> {
            let _ = payload;
            Ok(())
        }

        #[pulsar_io_task(topic = "persistent://t/ns/self")]
        pub(self) async fn self_task(payload: u32) -> Result<(), TaskError> {
            let _ = payload;
            Ok(())
        }

        pub(super) fn self_task_name() -> String {
            self_task::task().name().to_owned()
        }
    }

    pub(crate) fn names() -> [String; 3] {
        [
            inner::parent_task::task().name().to_owned(),
            inner::path_task::config().name,
            inner::self_task_name(),
        ]
    }
}

fn main() {
    let config = tasks::inner::public_task::config();
    assert_eq!(config.topic.to_string(), "persistent://t/ns/public");
    assert_eq!(tasks::inner::crate_task::task().name(), "crate_task");
    assert_eq!(tasks::names(), ["parent_task", "path_task", "self_task"]);
    let message = tasks::inner::public_task::message(&String::from("hello"))
        .into_message()
        .expect("a payload that encodes");
    assert_eq!(&message.payload[..], b"\"hello\"");
    let _: fn() -> TaskDefinition = tasks::inner::public_task::task;
}
