//! Everything a task file needs: `use worker_runtime::prelude::*;`.

pub use crate::auth::Principal;
pub use crate::{pulsar_db_task, pulsar_io_task, Task, TaskContext, TaskDefinition, TaskError};
pub use serde::{Deserialize, Serialize};
pub use worker_core::{Broker, Message, Topic};
