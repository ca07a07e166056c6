//! The counter domain: validation in front of a backend.

use std::sync::Arc;

use crate::backend::CounterBackend;
use crate::error::CounterError;

pub const MAX_NAME_CHARS: usize = 256;
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

#[derive(Clone)]
pub struct CounterStore {
    backend: Arc<dyn CounterBackend>,
}

impl CounterStore {
    pub fn new(backend: Arc<dyn CounterBackend>) -> Self {
        Self { backend }
    }

    pub async fn increment(&self, name: &str, delta: i64, idempotency_key: Option<&str>) -> Result<i64, CounterError> {
        validate_name(name)?;
        if idempotency_key.is_some_and(|k| k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_BYTES) {
            return Err(CounterError::invalid(
                "idempotency_key",
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes"),
            ));
        }
        self.backend.increment(name, delta, idempotency_key).await
    }

    pub async fn get(&self, name: &str) -> Result<i64, CounterError> {
        validate_name(name)?;
        self.backend.get(name).await
    }

    pub async fn reset(&self, name: &str) -> Result<i64, CounterError> {
        validate_name(name)?;
        self.backend.reset(name).await
    }
}

fn validate_name(name: &str) -> Result<(), CounterError> {
    if name.is_empty() {
        return Err(CounterError::invalid("name", "must not be empty"));
    }
    // Characters, not bytes, as the HTTP contract counts a string's length
    // (JSON Schema's maxLength).
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(CounterError::invalid(
            "name",
            format!("is {chars} characters; at most {MAX_NAME_CHARS}"),
        ));
    }
    Ok(())
}
