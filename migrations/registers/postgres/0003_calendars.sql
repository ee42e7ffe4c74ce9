-- Each school's calendar: register times, time zone, terms and closures. A calendar is
-- replaced whole; marks are never deleted when it changes.

CREATE TABLE calendars (
    laestab      TEXT PRIMARY KEY REFERENCES schools (laestab),
    time_zone    TEXT NOT NULL,
    am_opens     TEXT NOT NULL,
    am_closes    TEXT NOT NULL,
    pm_opens     TEXT NOT NULL,
    pm_closes    TEXT NOT NULL,
    updated_by   TEXT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE calendar_terms (
    laestab    TEXT NOT NULL REFERENCES calendars (laestab),
    name       TEXT NOT NULL,
    first_day  DATE NOT NULL,
    last_day   DATE NOT NULL,
    PRIMARY KEY (laestab, first_day)
);

CREATE TABLE calendar_closures (
    laestab       TEXT NOT NULL REFERENCES calendars (laestab),
    closure_date  DATE NOT NULL,
    session       TEXT NOT NULL,
    kind          TEXT NOT NULL,
    reason        TEXT NOT NULL,
    PRIMARY KEY (laestab, closure_date, session)
);
