//! The worker (placeholder until the pipeline lands).
use crate::task::Task;
/// What one task's consumer loop needs.
pub struct TaskRun;
pub(crate) async fn run_task<T: Task>(_run: TaskRun) {}
