//! Compile-time tests of `#[pulsar_io_task]` and `#[pulsar_db_task]`; see `tests/macro_ui.rs`.
