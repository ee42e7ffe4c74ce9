-- Parents and carers the school contacts about a pupil, as the MIS records them. Address lines
-- are stored joined by newlines. Contact details are personal data and are read only by
-- casework that writes to parents.

CREATE TABLE pupil_contacts (
    upn TEXT NOT NULL REFERENCES pupils (upn),
    priority INTEGER NOT NULL,
    name TEXT NOT NULL,
    relationship TEXT NOT NULL,
    parental_responsibility BOOLEAN NOT NULL,
    email TEXT NOT NULL,
    mobile TEXT NOT NULL,
    address TEXT NOT NULL,
    postcode TEXT NOT NULL,
    preferred_channel TEXT NOT NULL,
    PRIMARY KEY (upn, priority)
);
