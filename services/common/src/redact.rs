//! Keeping passwords out of logs and error messages.
//!
//! Database and Redis URLs carry their password in the userinfo part
//! (`postgres://user:secret@host/db`, `redis://:secret@host`). Anything that
//! may show such a URL to a log, an error or a listing goes through
//! [`passwords`] first, which keeps the URL recognisable but masks the secret:
//! `postgres://user:***@host/db`.

use std::borrow::Cow;

/// What a masked password reads as.
pub const MASK: &str = "***";

/// `text` with the password of every `scheme://user:password@host` URL in it
/// replaced by [`MASK`]. Text with no such URL is returned as it is (borrowed).
///
/// It works on text, not on parsed URLs, because the URLs that end up in
/// error messages are often exactly the ones that do not parse. A URL runs
/// from `://` to the next whitespace or quote; its userinfo ends at the last
/// `@` in it, so a password with an unescaped `@` or `/` is masked whole. When
/// in doubt it masks too much (`http://host:8080/a@b` becomes
/// `http://host:***@b`) rather than too little.
pub fn passwords(text: &str) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    let mut done = 0; // bytes of `text` already copied to `out`
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let start = search + found + 3;
        let end = text[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .map_or(text.len(), |n| start + n);
        search = end.max(start);
        let url = &text[start..end];
        let Some(at) = url.rfind('@') else { continue };
        let Some(colon) = url[..at].find(':') else { continue };
        if colon + 1 == at {
            continue; // `user:@host`: an empty password
        }
        let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
        out.push_str(&text[done..start + colon + 1]);
        out.push_str(MASK);
        done = start + at;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut out) => {
            out.push_str(&text[done..]);
            Cow::Owned(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::passwords;

    #[test]
    fn masks_the_password_of_database_and_redis_urls() {
        let cases = [
            ("postgres://u:secret@host/db", "postgres://u:***@host/db"),
            (
                "postgresql://mesh:hunter2@127.0.0.1:1/x",
                "postgresql://mesh:***@127.0.0.1:1/x",
            ),
            ("redis://:secret@cache:6379/0", "redis://:***@cache:6379/0"),
            ("rediss://user:pa:ss@cache", "rediss://user:***@cache"),
            // Unescaped `@` and `/` in a password: masked whole.
            ("postgres://u:p@ss/w@host/db", "postgres://u:***@host/db"),
            // In a message, with quotes around it, and two of them.
            (
                r#"unsupported database URL "mysql://root:toor@db/x": expected postgres://..."#,
                r#"unsupported database URL "mysql://root:***@db/x": expected postgres://..."#,
            ),
            (
                "a redis://:one@a and postgres://b:two@b/c",
                "a redis://:***@a and postgres://b:***@b/c",
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(passwords(raw), want, "{raw}");
        }
    }

    #[test]
    fn leaves_urls_without_a_password_alone() {
        for raw in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "redis://127.0.0.1:6379",
            "http://127.0.0.1:50051",
            "postgres://user:@host/db",
            "sqlite://data/items.db?mode=rwc",
            "no url here: a:b@c",
            "",
        ] {
            assert!(matches!(passwords(raw), std::borrow::Cow::Borrowed(_)), "{raw}");
        }
    }
}
