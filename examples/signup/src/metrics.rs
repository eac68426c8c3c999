//! The metrics service's read model: signups per day (by event time) and per email domain.

use choreo::{ApplyError, Projection, Received};

use crate::contract::SignedUp;

/// `signup_metrics_v1.per_day` and `signup_metrics_v1.per_domain`.
#[derive(Debug)]
pub struct SignupMetrics;

impl Projection for SignupMetrics {
    type Events = SignedUp;
    const NAME: &'static str = "signup_metrics";
    const VERSION: u32 = 1;

    fn schema_sql(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS per_day (
             day     date PRIMARY KEY,
             signups bigint NOT NULL
         );
         CREATE TABLE IF NOT EXISTS per_domain (
             domain  text PRIMARY KEY,
             signups bigint NOT NULL
         )"
    }

    async fn apply(
        &self,
        conn: &mut sqlx::PgConnection,
        events: &[Received<SignedUp>],
    ) -> Result<(), ApplyError> {
        // Collapse the batch per key first: one statement per key, not per event.
        let mut days: std::collections::BTreeMap<chrono::NaiveDate, i64> = Default::default();
        let mut domains: std::collections::BTreeMap<String, i64> = Default::default();
        for event in events {
            // The event's own time, never the clock: a rebuild gives the same days.
            *days.entry(event.meta.time.date_naive()).or_default() += 1;
            let domain = event
                .payload
                .email
                .rsplit_once('@')
                .map_or("", |(_, d)| d)
                .to_owned();
            *domains.entry(domain).or_default() += 1;
        }
        let (day_keys, day_counts): (Vec<_>, Vec<_>) = days.into_iter().unzip();
        sqlx::query(
            "INSERT INTO per_day (day, signups) SELECT * FROM UNNEST($1::date[], $2::bigint[])
             ON CONFLICT (day) DO UPDATE SET signups = per_day.signups + EXCLUDED.signups",
        )
        .bind(day_keys)
        .bind(day_counts)
        .execute(&mut *conn)
        .await?;
        let (domain_keys, domain_counts): (Vec<_>, Vec<_>) = domains.into_iter().unzip();
        sqlx::query(
            "INSERT INTO per_domain (domain, signups) SELECT * FROM UNNEST($1::text[], $2::bigint[])
             ON CONFLICT (domain) DO UPDATE SET signups = per_domain.signups + EXCLUDED.signups",
        )
        .bind(domain_keys)
        .bind(domain_counts)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// The view as the HTTP endpoint and the demo print it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub total: i64,
    pub per_day: Vec<(String, i64)>,
    pub per_domain: Vec<(String, i64)>,
}

/// Reads the live view.
pub async fn read(pool: &sqlx::PgPool) -> Result<Snapshot, sqlx::Error> {
    let per_day: Vec<(chrono::NaiveDate, i64)> =
        sqlx::query_as("SELECT day, signups FROM signup_metrics_v1.per_day ORDER BY day")
            .fetch_all(pool)
            .await?;
    let per_domain: Vec<(String, i64)> = sqlx::query_as(
        "SELECT domain, signups FROM signup_metrics_v1.per_domain ORDER BY signups DESC, domain",
    )
    .fetch_all(pool)
    .await?;
    Ok(Snapshot {
        total: per_day.iter().map(|(_, n)| n).sum(),
        per_day: per_day
            .into_iter()
            .map(|(d, n)| (d.to_string(), n))
            .collect(),
        per_domain,
    })
}
