use worker_runtime::prelude::*;

struct Service;

impl Service {
    #[pulsar_io_task(topic = "q1/t/ns/a")]
    async fn handle(&self, payload: u32) -> Result<(), TaskError> {
        let _ = payload;
        Ok(())
    }
}

fn main() {
    let _ = Service.handle(1);
}
