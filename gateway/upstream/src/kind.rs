//! [`Kind`]: whether a call may be repeated on the caller's behalf. Every
//! policy that sends a call more than once (retries, per-try timeouts,
//! hedging) asks it first.

use mesh_proto::bindings::{Idempotency, Rpc};

/// How a call may be repeated. One value per RPC (and, for writes that take
/// an idempotency key, per whether the caller gave one): see [`Kind::of`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Safe to repeat: retried on `UNAVAILABLE` or when an attempt outlives
    /// its per-try timeout, and hedged when enabled.
    Read,
    /// A write that is safe to repeat because it is idempotent or carries an
    /// idempotency key: retried like a read, never hedged.
    IdempotentWrite,
    /// Never repeated: a second attempt could apply it twice.
    Write,
}

impl Kind {
    /// The kind of a call with `message`, from its RPC's `idempotency_level`
    /// option in the protos, plus one rule: a request that carries an
    /// idempotency key is repeatable, because the service applies it once.
    ///
    /// | `idempotency_level` | key | kind |
    /// |---|---|---|
    /// | `NO_SIDE_EFFECTS` | any | [`Kind::Read`] |
    /// | `IDEMPOTENT` | any | [`Kind::IdempotentWrite`] |
    /// | unknown | given | [`Kind::IdempotentWrite`] |
    /// | unknown | none | [`Kind::Write`] |
    pub fn of<M: Rpc>(message: &M) -> Kind {
        Self::from_level(M::IDEMPOTENCY, !message.idempotency_key().is_empty())
    }

    fn from_level(level: Idempotency, keyed: bool) -> Kind {
        match level {
            Idempotency::NoSideEffects => Kind::Read,
            Idempotency::Idempotent => Kind::IdempotentWrite,
            Idempotency::Unknown if keyed => Kind::IdempotentWrite,
            Idempotency::Unknown => Kind::Write,
        }
    }

    /// Whether a failed or slow attempt may be sent again.
    pub fn is_repeatable(self) -> bool {
        match self {
            Kind::Read | Kind::IdempotentWrite => true,
            Kind::Write => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use mesh_proto::{cache, counter, items, tasks};

    use super::Kind;

    #[test]
    fn reads_are_reads_and_idempotent_writes_repeatable() {
        assert_eq!(Kind::of(&items::v1::GetItemRequest::default()), Kind::Read);
        assert_eq!(Kind::of(&tasks::v1::WatchTaskRequest::default()), Kind::Read);
        assert_eq!(Kind::of(&cache::v1::SetRequest::default()), Kind::IdempotentWrite);
        assert_eq!(Kind::of(&cache::v1::DeleteRequest::default()), Kind::IdempotentWrite);
    }

    #[test]
    fn writes_of_unknown_idempotency_are_repeatable_only_with_a_key() {
        let mut increment = counter::v1::IncrementRequest::default();
        assert_eq!(Kind::of(&increment), Kind::Write);
        increment.idempotency_key = "k1".into();
        assert_eq!(Kind::of(&increment), Kind::IdempotentWrite);

        let mut submit = tasks::v1::SubmitTaskRequest::default();
        assert_eq!(Kind::of(&submit), Kind::Write);
        submit.idempotency_key = "k1".into();
        assert_eq!(Kind::of(&submit), Kind::IdempotentWrite);

        // No key field at all: never repeated.
        assert_eq!(Kind::of(&items::v1::CreateItemRequest::default()), Kind::Write);
        assert_eq!(Kind::of(&counter::v1::ResetRequest::default()), Kind::Write);
    }
}
