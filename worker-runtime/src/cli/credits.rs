//! `credits grant|balance|history`: an operator's view of the credit ledger.

use super::args::CreditsCommand;
use crate::credits::CreditLedger;

/// Runs one `credits` subcommand against `ledger`, printing what it found.
pub(super) async fn run(command: &CreditsCommand, ledger: &dyn CreditLedger) -> anyhow::Result<()> {
    match command {
        CreditsCommand::Grant {
            principal,
            credit_type,
            amount,
        } => {
            let balance = ledger.grant(principal, credit_type, *amount).await?;
            println!("granted {amount} {credit_type} to {principal}: balance {balance}");
        }
        CreditsCommand::Balance {
            principal,
            credit_type,
        } => {
            let balance = ledger.balance(principal, credit_type).await?;
            println!("{principal}: {balance} {credit_type}");
        }
        CreditsCommand::History { principal, limit } => {
            let events = ledger.history(principal, *limit).await?;
            if events.is_empty() {
                println!("{principal}: no charges, refunds or grants");
            }
            for event in events {
                let at = humantime::format_rfc3339_millis(event.at());
                let what = match (&event.task, &event.message_id) {
                    (Some(task), Some(id)) => format!(" task {task} message {id}"),
                    _ => String::new(),
                };
                println!(
                    "{at} {:<6} {:>8} {}{what}",
                    event.kind, event.amount, event.credit_type
                );
            }
        }
    }
    Ok(())
}
