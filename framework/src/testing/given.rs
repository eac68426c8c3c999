//! given / when / then for aggregates, without Kafka:
//!
//! ```
//! use choreo::testing::given;
//! use choreo::testing::account::*;
//!
//! given::<Account>([AccountEvent::Opened(AccountOpened { account: "a".into() })])
//!     .when(AccountCommand::Withdraw(Withdraw { account: "a".into(), amount: 5 }))
//!     .then_reject("insufficient_funds");
//! ```

use std::fmt::Debug;

use crate::aggregate::{Aggregate, Rejection};

/// An aggregate rebuilt from past events.
#[derive(Debug)]
pub struct Given<A: Aggregate> {
    state: A,
}

/// The outcome of one command.
#[derive(Debug)]
pub struct Then<A: Aggregate> {
    outcome: Result<Vec<A::Event>, Rejection>,
}

/// Starts a test from past events.
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let mut state = A::default();
    for event in events {
        state.apply(&event);
    }
    Given { state }
}

impl<A: Aggregate> Given<A> {
    /// Decides a command.
    pub fn when(self, command: A::Command) -> Then<A> {
        Then {
            outcome: self.state.decide(&command),
        }
    }

    /// The state the events built.
    pub fn state(&self) -> &A {
        &self.state
    }
}

impl<A: Aggregate> Then<A>
where
    A::Event: PartialEq + Debug,
{
    /// Asserts the command was accepted with exactly these events.
    #[track_caller]
    pub fn then_expect(self, expected: impl IntoIterator<Item = A::Event>) {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.outcome {
            Ok(events) => assert_eq!(events, expected, "the command's events"),
            Err(rejection) => {
                panic!("expected events {expected:?}, the command was rejected: {rejection}")
            }
        }
    }

    /// Asserts the command was rejected with this code.
    #[track_caller]
    pub fn then_reject(self, code: &str) {
        match self.outcome {
            Ok(events) => {
                panic!("expected rejection {code:?}, the command was accepted with {events:?}")
            }
            Err(rejection) => assert_eq!(rejection.code, code, "rejection: {rejection}"),
        }
    }
}
