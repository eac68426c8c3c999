//! The email service: welcomes every new user, exactly once as far as anyone can tell.
//!
//! Sending is an outside effect, so it is at-least-once; the inbox (a row per event id,
//! written once the email is in the sink) makes a redelivered `v1.user.signedup` skip it.
//! `v1.email.sent` goes to `email.events` in the same Kafka transaction as the input offsets
//! (the reactor runner), with an id derived from the signup event, so a retried batch
//! announces the same email, not a second one.

use std::path::{Path, PathBuf};

use anyhow::Context;
use choreo::Received;
use choreo::reactor::{Inbox, Outputs, ReactError, Reactor};
use uuid::Uuid;

use crate::contract::{EmailSent, SignedUp};

/// The mail sink: a directory with one `.eml` file per email sent. Stands in for an SMTP
/// relay; a file is an outside effect that survives the process, like a sent email.
#[derive(Debug, Clone)]
pub struct MailSink {
    dir: PathBuf,
}

impl MailSink {
    /// The sink in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the mail sink {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// `SIGNUP_MAIL_DIR`, or `./mail-sink`.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::new(std::env::var("SIGNUP_MAIL_DIR").unwrap_or_else(|_| "mail-sink".into()))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one email with the given `Message-Id` (an idempotency key a real relay could
    /// use). Each call writes a new file, so a repeated send would show as a second file
    /// with the same id. Written to a temporary name and renamed: a reader never sees half
    /// an email.
    pub async fn send(
        &self,
        message_id: Uuid,
        to: &str,
        subject: &str,
        body: &str,
        cause: Uuid,
    ) -> anyhow::Result<()> {
        let file = Uuid::now_v7();
        let text = format!(
            "Message-Id: <{message_id}@signup.example>\nTo: {to}\nSubject: {subject}\nX-Caused-By: {cause}\n\n{body}\n"
        );
        let final_path = self.dir.join(format!("{file}.eml"));
        let temp_path = self.dir.join(format!(".{file}.tmp"));
        tokio::fs::write(&temp_path, text)
            .await
            .with_context(|| format!("cannot write {}", temp_path.display()))?;
        tokio::fs::rename(&temp_path, &final_path)
            .await
            .with_context(|| format!("cannot rename to {}", final_path.display()))?;
        Ok(())
    }
}

/// Reacts to `v1.user.signedup` with a welcome email and `v1.email.sent`.
#[derive(Debug)]
pub struct WelcomeEmail {
    pub sink: MailSink,
    pub inbox: Inbox,
}

impl WelcomeEmail {
    pub const TEMPLATE: &'static str = "welcome";
}

impl Reactor for WelcomeEmail {
    type Events = SignedUp;
    const NAME: &'static str = "welcome-email";

    async fn react(
        &self,
        event: &Received<SignedUp>,
        out: &mut Outputs<'_>,
    ) -> Result<(), ReactError> {
        let user = &event.payload;
        // Derived from the signup event: the same on every redelivery.
        let message_id = Uuid::new_v5(&event.meta.id, b"welcome-email");
        self.inbox
            .once(event.meta.id, async {
                let body = format!(
                    "Hello {},\n\nwelcome aboard! Your user id is {}.",
                    user.name, user.user_id
                );
                self.sink
                    .send(message_id, &user.email, "Welcome!", &body, event.meta.id)
                    .await
                    .map_err(ReactError::Transient)
            })
            .await?;
        // Skipped on a redelivery (the inbox has the event): announced all the same, with the
        // same derived id, since the transaction that announced it first may have aborted.
        out.event(&EmailSent {
            to: user.email.clone(),
            user_id: user.user_id,
            template: Self::TEMPLATE.into(),
            message_id,
        })?;
        Ok(())
    }
}
