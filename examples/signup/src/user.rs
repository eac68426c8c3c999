//! The user service's own knowledge: the registration rule (one account per email address)
//! and the users read model.

use choreo::aggregate::{Aggregate, Rejection};
use choreo::{ApplyError, Projection, Received};
use uuid::Uuid;

use crate::contract::{SignUp, SignedUp};

/// One email address: who holds it, if anyone. The aggregate is keyed by the address, so
/// two signups racing for it are decided one after the other by the partition's single
/// writer: no database lock, no unique index, still no duplicate account.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    holder: Option<Uuid>,
}

impl Aggregate for Registration {
    type Command = SignUp;
    type Event = SignedUp;

    fn decide(&self, command: &SignUp) -> Result<Vec<SignedUp>, Rejection> {
        if self.holder.is_some() {
            return Err(Rejection::new(
                "email_taken",
                format!("{} already has an account", command.email),
            ));
        }
        Ok(vec![SignedUp {
            user_id: command.user_id,
            email: command.email.clone(),
            name: command.name.clone(),
        }])
    }

    fn apply(&mut self, event: &SignedUp) {
        self.holder = Some(event.user_id);
    }
}

/// What a signup request must look like; the error says what is wrong.
pub fn validate(email: &str, name: &str) -> Result<(String, String), String> {
    let email = email.trim().to_ascii_lowercase();
    let name = name.trim().to_owned();
    let Some((local, domain)) = email.split_once('@') else {
        return Err(format!("email {email:?} has no @"));
    };
    if local.is_empty() || domain.is_empty() || domain.contains('@') {
        return Err(format!("email {email:?} is not an address"));
    }
    if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
        return Err(format!(
            "email {email:?}: the domain {domain:?} is not valid"
        ));
    }
    if email.len() > 254 || email.chars().any(char::is_whitespace) {
        return Err(format!(
            "email {email:?} is too long or contains white space"
        ));
    }
    if name.is_empty() {
        return Err("name is empty".into());
    }
    if name.chars().count() > 200 {
        return Err("name is longer than 200 characters".into());
    }
    Ok((email, name))
}

/// The users read model: `users_v1.users`.
#[derive(Debug)]
pub struct UsersView;

impl Projection for UsersView {
    type Events = SignedUp;
    const NAME: &'static str = "users";
    const VERSION: u32 = 1;

    fn schema_sql(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS users (
             user_id      uuid PRIMARY KEY,
             email        text NOT NULL UNIQUE,
             name         text NOT NULL,
             signed_up_at timestamptz NOT NULL
         )"
    }

    async fn apply(
        &self,
        conn: &mut sqlx::PgConnection,
        events: &[Received<SignedUp>],
    ) -> Result<(), ApplyError> {
        for event in events {
            sqlx::query(
                "INSERT INTO users (user_id, email, name, signed_up_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(event.payload.user_id)
            .bind(&event.payload.email)
            .bind(&event.payload.name)
            .bind(event.meta.time)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use choreo::testing::given;

    #[test]
    fn an_address_is_taken_once() {
        let first = SignUp {
            user_id: Uuid::from_u128(1),
            email: "ada@example.com".into(),
            name: "Ada".into(),
        };
        let signed_up = SignedUp {
            user_id: first.user_id,
            email: first.email.clone(),
            name: first.name.clone(),
        };
        given::<Registration>([])
            .when(first.clone())
            .then_expect([signed_up.clone()]);
        given::<Registration>([signed_up])
            .when(SignUp {
                user_id: Uuid::from_u128(2),
                ..first
            })
            .then_reject("email_taken");
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        assert_eq!(
            validate(" Ada@Example.COM ", " Ada "),
            Ok(("ada@example.com".into(), "Ada".into()))
        );
        assert!(
            validate("ada.example.com", "Ada")
                .expect_err("invalid")
                .contains("no @")
        );
        assert!(
            validate("ada@localhost", "Ada")
                .expect_err("invalid")
                .contains("domain")
        );
        assert!(
            validate("ada@example.com", "  ")
                .expect_err("invalid")
                .contains("name")
        );
    }
}
