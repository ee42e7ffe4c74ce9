-- Files imported, by SHA-256, with what each import did.

CREATE TABLE file_imports (
    sha256          TEXT PRIMARY KEY,
    file_name       TEXT NOT NULL,
    laestab         TEXT NOT NULL,
    pupils          INTEGER NOT NULL,
    marks_recorded  INTEGER NOT NULL,
    imported_by     TEXT NOT NULL,
    imported_at     TIMESTAMPTZ NOT NULL
);
