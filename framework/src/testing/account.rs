//! A bank account: the drill aggregate. Its invariant (the balance never goes negative) is
//! what the conflicting-commands tests check.

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, Rejection};

/// Opens an account; rejected if it is already open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAccount {
    /// The account's id: the subject.
    pub account: String,
}
impl crate::Command for OpenAccount {
    const NAME: &'static str = "v1.account.open";
    fn subject(&self) -> String {
        self.account.clone()
    }
}

/// Adds money to an open account; rejected unless `amount` is positive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deposit {
    /// The account's id: the subject.
    pub account: String,
    /// How much to add; must be positive.
    pub amount: i64,
}
impl crate::Command for Deposit {
    const NAME: &'static str = "v1.account.deposit";
    fn subject(&self) -> String {
        self.account.clone()
    }
}

/// Takes money from an open account; rejected if it exceeds the balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdraw {
    /// The account's id: the subject.
    pub account: String,
    /// How much to take; at most the balance.
    pub amount: i64,
}
impl crate::Command for Withdraw {
    const NAME: &'static str = "v1.account.withdraw";
    fn subject(&self) -> String {
        self.account.clone()
    }
}

/// An account was opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountOpened {
    /// The account's id: the subject.
    pub account: String,
}
impl crate::Event for AccountOpened {
    const NAME: &'static str = "v1.account.opened";
    fn subject(&self) -> String {
        self.account.clone()
    }
}

/// Money was added to an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deposited {
    /// The account's id: the subject.
    pub account: String,
    /// How much was added.
    pub amount: i64,
}
impl crate::Event for Deposited {
    const NAME: &'static str = "v1.account.deposited";
    fn subject(&self) -> String {
        self.account.clone()
    }
}

/// Money was taken from an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdrawn {
    /// The account's id: the subject.
    pub account: String,
    /// How much was taken.
    pub amount: i64,
}
impl crate::Event for Withdrawn {
    const NAME: &'static str = "v1.account.withdrawn";
    fn subject(&self) -> String {
        self.account.clone()
    }
}

crate::command_set! {
    /// The commands an [`Account`] decides on, one variant per command type.
    // `command_set!` takes no attributes on variants, so they cannot carry docs.
    #[allow(missing_docs)]
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum AccountCommand {
        Open(OpenAccount),
        Deposit(Deposit),
        Withdraw(Withdraw),
    }
}

crate::event_set! {
    /// The events an [`Account`] emits and is rebuilt from, one variant per event type.
    // `event_set!` takes no attributes on variants, so they cannot carry docs.
    #[allow(missing_docs)]
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum AccountEvent {
        Opened(AccountOpened),
        Deposited(Deposited),
        Withdrawn(Withdrawn),
    }
}

/// An account's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Whether it has been opened.
    pub open: bool,
    /// Deposits less withdrawals; never negative.
    pub balance: i64,
}

impl Aggregate for Account {
    type Command = AccountCommand;
    type Event = AccountEvent;

    fn decide(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, Rejection> {
        match command {
            AccountCommand::Open(c) if self.open => Err(Rejection::new(
                "already_open",
                format!("account {} is already open", c.account),
            )),
            AccountCommand::Open(c) => Ok(vec![AccountEvent::Opened(AccountOpened {
                account: c.account.clone(),
            })]),
            _ if !self.open => Err(Rejection::new("not_open", "the account is not open")),
            AccountCommand::Deposit(c) if c.amount <= 0 => {
                Err(Rejection::new("bad_amount", "deposits are positive"))
            }
            AccountCommand::Deposit(c) => Ok(vec![AccountEvent::Deposited(Deposited {
                account: c.account.clone(),
                amount: c.amount,
            })]),
            AccountCommand::Withdraw(c) if c.amount > self.balance => Err(Rejection::new(
                "insufficient_funds",
                format!("balance {} is less than {}", self.balance, c.amount),
            )),
            AccountCommand::Withdraw(c) => Ok(vec![AccountEvent::Withdrawn(Withdrawn {
                account: c.account.clone(),
                amount: c.amount,
            })]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened(_) => self.open = true,
            AccountEvent::Deposited(e) => self.balance += e.amount,
            AccountEvent::Withdrawn(e) => self.balance -= e.amount,
        }
    }
}
