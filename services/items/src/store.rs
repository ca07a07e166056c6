//! The items store: SQL rows <-> the contract's messages, validation and
//! optimistic concurrency. It takes and returns `mesh.items.v1` messages
//! (prost types, no tonic), so a new item field is one column here and one
//! field in the proto, with no third shape in between.

use mesh_proto::items::v1::{CreateItemRequest, Item, UpdateItemRequest};
use mesh_proto::time::from_millis;
use mesh_sql::now_ms;
use sqlx::{AnyPool, Row, any::AnyRow};

use crate::error::ItemError;

pub const MAX_NAME: usize = 200;
pub const MAX_DESCRIPTION: usize = 10_000;
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG: usize = 64;
pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 1000;

#[derive(Debug)]
pub struct Page {
    pub items: Vec<Item>,
    pub next_token: Option<String>,
}

/// The SQLite migrations, embedded.
pub fn sqlite_migrations() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations/sqlite")
}

/// The PostgreSQL migrations, embedded.
pub fn postgres_migrations() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations/postgres")
}

const COLUMNS: &str = "id, name, description, price_cents, tags, created_ms, updated_ms, version";

#[derive(Clone, Debug)]
pub struct ItemStore {
    pool: AnyPool,
}

impl ItemStore {
    pub fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

    pub async fn create(&self, new: CreateItemRequest) -> Result<Item, ItemError> {
        let name = validate_name(&new.name)?;
        validate_description(&new.description)?;
        validate_price(new.price_cents)?;
        let tags = validate_tags(new.tags)?;
        let now = now_ms();
        let sql = format!(
            "INSERT INTO items (name, description, price_cents, tags, created_ms, updated_ms, version) \
             VALUES ($1, $2, $3, $4, $5, $5, 1) RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(name)
            .bind(new.description)
            .bind(new.price_cents)
            .bind(tags_json(&tags))
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
        item_from_row(&row)
    }

    pub async fn get(&self, id: i64) -> Result<Item, ItemError> {
        validate_id(id)?;
        let sql = format!("SELECT {COLUMNS} FROM items WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?;
        match row {
            Some(row) => item_from_row(&row),
            None => Err(ItemError::NotFound(id)),
        }
    }

    /// One page in id order. The token carries the last id seen, so page N
    /// costs an index seek, not an OFFSET scan.
    pub async fn list(&self, page_size: i32, token: &str) -> Result<Page, ItemError> {
        let size = page_size_or_default(page_size)?;
        let after = decode_token(token)?;
        let sql = format!("SELECT {COLUMNS} FROM items WHERE id > $1 ORDER BY id LIMIT $2");
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(i64::from(size) + 1)
            .fetch_all(&self.pool)
            .await?;
        let mut items = rows.iter().map(item_from_row).collect::<Result<Vec<_>, _>>()?;
        let next_token = if items.len() > size as usize {
            items.truncate(size as usize);
            items.last().map(|last| encode_token(last.id))
        } else {
            None
        };
        Ok(Page { items, next_token })
    }

    /// Applies `patch` in one statement. With `expected_version`, the row only
    /// changes if its version still matches, so of two concurrent updates made
    /// from the same version exactly one wins (across processes too).
    /// Fields the request leaves unset stay as they are (`tags` set and
    /// empty clears them).
    pub async fn update(&self, patch: UpdateItemRequest) -> Result<Item, ItemError> {
        let (id, expected_version) = (patch.id, patch.expected_version);
        validate_id(id)?;
        let name = patch.name.as_deref().map(validate_name).transpose()?;
        if let Some(d) = &patch.description {
            validate_description(d)?;
        }
        if let Some(p) = patch.price_cents {
            validate_price(p)?;
        }
        let tags = patch
            .tags
            .map(|t| validate_tags(t.values))
            .transpose()?
            .map(|t| tags_json(&t));
        if expected_version.is_some_and(|v| v < 1) {
            return Err(ItemError::invalid("expected_version", "must be at least 1"));
        }
        let sql = format!(
            "UPDATE items SET \
                name = COALESCE($2, name), \
                description = COALESCE($3, description), \
                price_cents = COALESCE($4, price_cents), \
                tags = COALESCE($5, tags), \
                updated_ms = $6, \
                version = version + 1 \
             WHERE id = $1 AND (CAST($7 AS BIGINT) IS NULL OR version = $7) \
             RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(name)
            .bind(patch.description)
            .bind(patch.price_cents)
            .bind(tags)
            .bind(now_ms())
            .bind(expected_version)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => item_from_row(&row),
            None => Err(self.explain_miss(id, expected_version).await),
        }
    }

    pub async fn delete(&self, id: i64, expected_version: Option<i64>) -> Result<(), ItemError> {
        validate_id(id)?;
        let done = sqlx::query("DELETE FROM items WHERE id = $1 AND (CAST($2 AS BIGINT) IS NULL OR version = $2)")
            .bind(id)
            .bind(expected_version)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(self.explain_miss(id, expected_version).await)
        }
    }

    /// Why a conditional write touched no row: the item is gone, or its version moved on.
    async fn explain_miss(&self, id: i64, expected: Option<i64>) -> ItemError {
        let current = sqlx::query("SELECT version FROM items WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await;
        match (current, expected) {
            (Ok(Some(row)), Some(expected)) => match row.try_get::<i64, _>(0) {
                Ok(actual) => ItemError::VersionConflict { id, expected, actual },
                Err(err) => err.into(),
            },
            // The row exists and no version was asked for: it was re-created
            // or changed between our statements; report the race as a conflict.
            (Ok(Some(_)), None) => ItemError::VersionConflict {
                id,
                expected: 0,
                actual: 0,
            },
            (Ok(None), _) => ItemError::NotFound(id),
            (Err(err), _) => err.into(),
        }
    }
}

fn item_from_row(row: &AnyRow) -> Result<Item, ItemError> {
    let tags: String = row.try_get("tags")?;
    Ok(Item {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        price_cents: row.try_get("price_cents")?,
        tags: serde_json::from_str(&tags)
            .map_err(|e| ItemError::Internal(format!("stored tags are not a JSON list: {e}")))?,
        create_time: Some(from_millis(row.try_get("created_ms")?)),
        update_time: Some(from_millis(row.try_get("updated_ms")?)),
        version: row.try_get("version")?,
    })
}

fn tags_json(tags: &[String]) -> String {
    serde_json::Value::from(tags.to_vec()).to_string()
}

fn validate_id(id: i64) -> Result<(), ItemError> {
    if id < 1 {
        return Err(ItemError::invalid(
            "id",
            format!("must be a positive integer, got {id}"),
        ));
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<&str, ItemError> {
    mesh_sql::check_text(name).map_err(|m| ItemError::invalid("name", m))?;
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(ItemError::invalid("name", "must not be empty"));
    }
    if trimmed.chars().count() > MAX_NAME {
        return Err(ItemError::invalid(
            "name",
            format!("must be at most {MAX_NAME} characters"),
        ));
    }
    Ok(trimmed)
}

fn validate_description(d: &str) -> Result<(), ItemError> {
    mesh_sql::check_text(d).map_err(|m| ItemError::invalid("description", m))?;
    if d.chars().count() > MAX_DESCRIPTION {
        return Err(ItemError::invalid(
            "description",
            format!("must be at most {MAX_DESCRIPTION} characters"),
        ));
    }
    Ok(())
}

fn validate_price(p: i64) -> Result<(), ItemError> {
    if p < 0 {
        return Err(ItemError::invalid(
            "price_cents",
            format!("must not be negative, got {p}"),
        ));
    }
    Ok(())
}

/// Trims tags, drops duplicates (keeping first-seen order) and checks bounds.
fn validate_tags(tags: Vec<String>) -> Result<Vec<String>, ItemError> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        mesh_sql::check_text(&tag).map_err(|m| ItemError::invalid("tags", format!("a tag {m}")))?;
        let tag = tag.trim();
        if tag.is_empty() {
            return Err(ItemError::invalid("tags", "a tag must not be empty"));
        }
        if tag.chars().count() > MAX_TAG {
            return Err(ItemError::invalid(
                "tags",
                format!("a tag must be at most {MAX_TAG} characters"),
            ));
        }
        if !out.iter().any(|t| t == tag) {
            out.push(tag.to_string());
        }
    }
    if out.len() > MAX_TAGS {
        return Err(ItemError::invalid("tags", format!("at most {MAX_TAGS} tags")));
    }
    Ok(out)
}

fn page_size_or_default(size: i32) -> Result<u32, ItemError> {
    match size {
        0 => Ok(DEFAULT_PAGE),
        1.. if size as u32 <= MAX_PAGE => Ok(size as u32),
        _ => Err(ItemError::invalid(
            "page_size",
            format!("must be between 1 and {MAX_PAGE} (or 0 for {DEFAULT_PAGE}), got {size}"),
        )),
    }
}

/// Page tokens are `after-<last id>`: the form is public (the OpenAPI
/// document states it as a pattern, `PAGE_TOKEN_PATTERN`), and a forged one
/// is harmless, it only says where the page starts.
fn encode_token(last_id: i64) -> String {
    format!("after-{last_id}")
}

fn decode_token(token: &str) -> Result<i64, ItemError> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .strip_prefix("after-")
        .and_then(mesh_sql::positive_id)
        .ok_or_else(|| ItemError::invalid("page_token", "not a token this service issued"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_foreign_tokens_are_rejected() {
        assert_eq!(encode_token(42), "after-42");
        assert_eq!(decode_token(&encode_token(42)).unwrap(), 42);
        assert_eq!(decode_token("").unwrap(), 0);
        for bad in [
            "!!",
            "after-",
            "after-0",
            "after-007",
            "after-+5",
            "after--3",
            "after-1x",
            "before-5",
        ] {
            assert!(
                matches!(
                    decode_token(bad),
                    Err(ItemError::InvalidArgument {
                        field: "page_token",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn tags_are_trimmed_deduplicated_and_bounded() {
        let t = validate_tags(vec![" a ".into(), "b".into(), "a".into()]).unwrap();
        assert_eq!(t, vec!["a", "b"]);
        assert!(validate_tags(vec!["".into()]).is_err());
        assert!(validate_tags((0..40).map(|i| i.to_string()).collect()).is_err());
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size_or_default(0).unwrap(), DEFAULT_PAGE);
        assert_eq!(page_size_or_default(7).unwrap(), 7);
        assert!(page_size_or_default(-1).is_err());
        assert!(page_size_or_default(1001).is_err());
    }
}
