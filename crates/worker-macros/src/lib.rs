//! The `#[pulsar_io_task]` and `#[pulsar_db_task]` attributes. Use them through `worker_runtime`.
use proc_macro::TokenStream;

/// Declares an I/O task (placeholder until the expansion lands).
#[proc_macro_attribute]
pub fn pulsar_io_task(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}

/// Declares a db task (placeholder until the expansion lands).
#[proc_macro_attribute]
pub fn pulsar_db_task(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}
