//! Upcasting: old versions of an event become the newest before user code sees them.
//!
//! The newest type declares where it came from, once, in its [`Event`] impl:
//!
//! ```
//! # use serde::{Deserialize, Serialize};
//! # use choreo::Event;
//! # use choreo::event::Upcasters;
//! #[derive(Serialize, Deserialize)]
//! struct SignedUpV1 { email: String }
//! impl Event for SignedUpV1 {
//!     const NAME: &'static str = "v1.user.signedup";
//!     fn subject(&self) -> String { self.email.clone() }
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! struct SignedUp { email: String, plan: String }
//! impl Event for SignedUp {
//!     const NAME: &'static str = "v2.user.signedup";
//!     fn subject(&self) -> String { self.email.clone() }
//!     fn upcasters() -> Upcasters<Self> {
//!         Upcasters::new().from(|old: SignedUpV1| SignedUp { email: old.email, plan: "free".into() })
//!     }
//! }
//! ```
//!
//! Chains compose: if `v3` declares `from(v2 -> v3)` and `v2` declares `from(v1 -> v2)`, a
//! `v1` record reaches a `v3` handler through both steps. Handlers, projections and aggregates
//! that read `SignedUp` receive `v1.user.signedup` records as `SignedUp`; the metadata still
//! says `v1.user.signedup` (it is what the log holds).
//!
//! Upcasting is a pure function of the old payload: a rebuild and a live run produce the same
//! values, so the rebuilt read model equals the live one.

use std::fmt;
use std::sync::Arc;

use crate::message::{EnvelopeError, Metadata};

use super::Event;

type Step<T> =
    Arc<dyn Fn(&Metadata, Option<&[u8]>) -> Result<T, EnvelopeError> + Send + Sync + 'static>;

/// How older message types become `T`: one entry per older name, each decoding with the old
/// type's own codec and schema and applying the chain of upcasts.
pub struct Upcasters<T> {
    steps: Vec<(&'static str, Step<T>)>,
}

impl<T> fmt::Debug for Upcasters<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.steps.iter().map(|(name, _)| name))
            .finish()
    }
}

impl<T> Default for Upcasters<T> {
    fn default() -> Self {
        Self { steps: Vec::new() }
    }
}

impl<T: 'static> Upcasters<T> {
    /// No older versions.
    pub fn new() -> Self {
        Self::default()
    }

    /// `Old` (and everything `Old` itself upcasts from) becomes `T` through `upcast`.
    pub fn from<Old: Event>(mut self, upcast: impl Fn(Old) -> T + Send + Sync + 'static) -> Self {
        let upcast = Arc::new(upcast);
        let direct = Arc::clone(&upcast);
        self.steps.push((
            Old::NAME,
            Arc::new(move |meta, payload| super::decode_event::<Old>(meta, payload).map(&*direct)),
        ));
        for (name, older) in Old::upcasters().steps {
            let upcast = Arc::clone(&upcast);
            self.steps.push((
                name,
                Arc::new(move |meta, payload| older(meta, payload).map(&*upcast)),
            ));
        }
        self
    }

    /// The older message names this chain reads.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.steps.iter().map(|(name, _)| *name)
    }

    /// Whether there is no older version.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Decodes and upcasts a record of an older type; `None` when its type is not in the chain.
    pub fn decode(
        &self,
        meta: &Metadata,
        payload: Option<&[u8]>,
    ) -> Option<Result<T, EnvelopeError>> {
        self.steps
            .iter()
            .find(|(name, _)| *name == meta.message_type)
            .map(|(_, step)| step(meta, payload))
    }
}
