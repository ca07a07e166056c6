//! [`Kind`]: whether a call may be repeated on the caller's behalf. Every
//! policy that sends a call more than once (retries, per-try timeouts,
//! hedging) asks it first.

/// How a call may be repeated. One value per RPC (and, for writes that take
/// an idempotency key, per whether the caller gave one).
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
    /// Whether a failed or slow attempt may be sent again.
    pub fn is_repeatable(self) -> bool {
        match self {
            Kind::Read | Kind::IdempotentWrite => true,
            Kind::Write => false,
        }
    }
}
