//! Compile-time behaviour of `#[pulsar_io_task]` and `#[pulsar_db_task]`: what compiles, and the
//! exact diagnostics of what does not (`ui/fail/*.stderr`; regenerate with `TRYBUILD=overwrite`).

#[test]
fn macro_ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("ui/pass/*.rs");
    cases.compile_fail("ui/fail/*.rs");
}
