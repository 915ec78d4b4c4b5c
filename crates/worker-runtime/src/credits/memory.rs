//! In-memory ledger (placeholder until it lands).
/// In-memory ledger.
pub struct MemoryCreditLedger;
