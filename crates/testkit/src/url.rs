//! String handling for `postgres://` connection URLs.
//!
//! The functions here do no I/O, so the handling of `ROLLCALL_TEST_DATABASE_URL` can be
//! tested without setting environment variables.

use anyhow::{Context as _, bail};

/// A `postgres://` URL split around its database name.
#[derive(Debug, PartialEq, Eq)]
struct UrlParts<'a> {
    /// Scheme and authority, for example `postgres://user:secret@host:5432`.
    base: &'a str,
    /// Database name without the leading `/`, empty when the URL names none.
    database: &'a str,
    /// Query and fragment including their `?` or `#`, or empty.
    rest: &'a str,
}

const SCHEMES: [&str; 2] = ["postgres://", "postgresql://"];

fn split_url(url: &str) -> anyhow::Result<UrlParts<'_>> {
    let Some(after_scheme) = SCHEMES.iter().find_map(|scheme| url.strip_prefix(scheme)) else {
        bail!("invalid PostgreSQL URL: it must start with postgres:// or postgresql://");
    };

    let authority_len = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let base_end = url.len() - after_scheme.len() + authority_len;
    let (base, tail) = url.split_at(base_end);

    let path_len = tail.find(['?', '#']).unwrap_or(tail.len());
    let (path, rest) = tail.split_at(path_len);
    let database = path.strip_prefix('/').unwrap_or(path);
    if database.contains('/') {
        bail!("invalid PostgreSQL URL: the path must be a single database name");
    }

    Ok(UrlParts {
        base,
        database,
        rest,
    })
}

/// Returns `url` with its database name replaced by `database`, keeping user, password, host,
/// port and query parameters. `database` is inserted as is, so it must need no percent-encoding.
pub(crate) fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let parts = split_url(url)?;
    Ok(format!("{}/{database}{}", parts.base, parts.rest))
}

/// Returns the URL to run `CREATE DATABASE` on: `url` itself when it names a database, and
/// otherwise `url` pointed at the `postgres` maintenance database.
///
/// Without a database name PostgreSQL would pick the database named after the user, which
/// often does not exist.
pub(crate) fn maintenance_url(url: &str) -> anyhow::Result<String> {
    let parts = split_url(url)?;
    if parts.database.is_empty() {
        with_database(url, "postgres")
    } else {
        Ok(url.to_owned())
    }
}

/// Returns `url` with any password replaced by `***`, for error messages and logs.
pub(crate) fn redact_password(url: &str) -> String {
    let Ok(parts) = split_url(url) else {
        return "<invalid PostgreSQL URL>".to_owned();
    };
    let Some(scheme_end) = parts.base.find("://") else {
        return "<invalid PostgreSQL URL>".to_owned();
    };
    let (scheme, authority) = parts.base.split_at(scheme_end + 3);
    let Some((user_info, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let Some((user, _password)) = user_info.split_once(':') else {
        return url.to_owned();
    };

    let path_and_rest = &url[parts.base.len()..];
    format!("{scheme}{user}:***@{host}{path_and_rest}")
}

/// Interprets the value of `ROLLCALL_TEST_DATABASE_URL` and returns the maintenance URL to
/// use, or `None` when the variable is unset or blank and a throwaway server should start.
pub(crate) fn maintenance_url_from_env(value: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(value) = value.map(str::trim).filter(|value| !value.is_empty()) else {
        return Ok(None);
    };
    let url = maintenance_url(value).with_context(|| {
        format!(
            "invalid {}: expected a URL like postgres://USER:PASSWORD@HOST:PORT/postgres",
            crate::DATABASE_URL_ENV
        )
    })?;
    Ok(Some(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_url_with_database_and_query() {
        let parts = split_url("postgres://app:secret@db.internal:6543/rollcall?sslmode=disable")
            .expect("URL is valid");
        assert_eq!(parts.base, "postgres://app:secret@db.internal:6543");
        assert_eq!(parts.database, "rollcall");
        assert_eq!(parts.rest, "?sslmode=disable");
    }

    #[test]
    fn split_url_without_path() {
        let parts = split_url("postgresql://localhost").expect("URL is valid");
        assert_eq!(parts.base, "postgresql://localhost");
        assert_eq!(parts.database, "");
        assert_eq!(parts.rest, "");
    }

    #[test]
    fn split_url_with_query_but_no_path() {
        let parts = split_url("postgres://localhost?host=/run/postgresql").expect("URL is valid");
        assert_eq!(parts.base, "postgres://localhost");
        assert_eq!(parts.database, "");
        assert_eq!(parts.rest, "?host=/run/postgresql");
    }

    #[test]
    fn split_url_rejects_other_schemes() {
        for url in [
            "mysql://localhost/db",
            "localhost:5432",
            "",
            "sqlite://x.db",
        ] {
            assert!(split_url(url).is_err(), "{url:?} should be rejected");
        }
    }

    #[test]
    fn split_url_rejects_nested_path() {
        assert!(split_url("postgres://localhost/a/b").is_err());
    }

    #[test]
    fn with_database_replaces_name() {
        let url = with_database(
            "postgres://app:secret@host:5432/postgres?sslmode=require",
            "t1",
        )
        .expect("URL is valid");
        assert_eq!(url, "postgres://app:secret@host:5432/t1?sslmode=require");
    }

    #[test]
    fn with_database_adds_missing_name() {
        let url = with_database("postgres://host", "t1").expect("URL is valid");
        assert_eq!(url, "postgres://host/t1");

        let url = with_database("postgres://host/", "t1").expect("URL is valid");
        assert_eq!(url, "postgres://host/t1");
    }

    #[test]
    fn maintenance_url_keeps_named_database() {
        let url = maintenance_url("postgres://u@h/admin").expect("URL is valid");
        assert_eq!(url, "postgres://u@h/admin");
    }

    #[test]
    fn maintenance_url_defaults_to_postgres() {
        let url = maintenance_url("postgres://u@h:5433?sslmode=disable").expect("URL is valid");
        assert_eq!(url, "postgres://u@h:5433/postgres?sslmode=disable");
    }

    #[test]
    fn redact_password_hides_secret() {
        let redacted = redact_password("postgres://app:s3cr%40t@host:5432/db?sslmode=disable");
        assert_eq!(redacted, "postgres://app:***@host:5432/db?sslmode=disable");
        assert!(!redacted.contains("s3cr"));
    }

    #[test]
    fn redact_password_keeps_url_without_password() {
        let url = "postgres://postgres@127.0.0.1:5432/postgres";
        assert_eq!(redact_password(url), url);
        assert_eq!(redact_password("postgres://host"), "postgres://host");
    }

    #[test]
    fn redact_password_hides_invalid_url() {
        assert_eq!(
            redact_password("mysql://u:secret@h/db"),
            "<invalid PostgreSQL URL>"
        );
    }

    #[test]
    fn env_value_unset_or_blank_means_throwaway() {
        assert_eq!(maintenance_url_from_env(None).expect("no error"), None);
        assert_eq!(maintenance_url_from_env(Some("")).expect("no error"), None);
        assert_eq!(
            maintenance_url_from_env(Some("  \n")).expect("no error"),
            None
        );
    }

    #[test]
    fn env_value_is_used_as_server() {
        let url =
            maintenance_url_from_env(Some(" postgres://ci@127.0.0.1:5432 ")).expect("URL is valid");
        assert_eq!(
            url.as_deref(),
            Some("postgres://ci@127.0.0.1:5432/postgres")
        );
    }

    #[test]
    fn env_value_invalid_names_variable() {
        let error = maintenance_url_from_env(Some("localhost:5432"))
            .expect_err("a URL without scheme is invalid");
        let message = format!("{error:#}");
        assert!(message.contains("ROLLCALL_TEST_DATABASE_URL"), "{message}");
        assert!(message.contains("postgres://"), "{message}");
    }
}
