-- The references of stored marks are checked once per statement instead of once per row.
--
-- A foreign key runs a query and locks the parent row for every row written, which took about
-- half the time of an import's write: 1,000 new versions repeat the same school 1,000
-- times and each pupil twice. The triggers below keep what the foreign keys guaranteed, with
-- one query per statement:
--
-- * a new or changed mark names a stored school, pupil and (when set) absence report, and
--   those rows are locked FOR KEY SHARE, once each, as the foreign key would have locked them,
--   so a concurrent delete waits for the writer and then finds the mark;
-- * an effective mark points at a stored version;
-- * a school, pupil, absence report or version still referenced cannot be deleted or have its
--   key changed.
--
-- Each failure raises foreign_key_violation (SQLSTATE 23503), as the foreign key did, with the
-- value that is missing or still referenced.
--
-- The functions keep the search path they were created with, the registers' schema, so they
-- find the same tables whichever session's write fires them.

ALTER TABLE marks
    DROP CONSTRAINT marks_laestab_fkey,
    DROP CONSTRAINT marks_upn_fkey,
    DROP CONSTRAINT marks_absence_report_id_fkey;
ALTER TABLE effective_marks DROP CONSTRAINT effective_marks_sequence_fkey;

CREATE FUNCTION marks_check_references() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
DECLARE
    wanted bigint;
    locked bigint;
    missing text;
BEGIN
    SELECT COUNT(DISTINCT laestab) INTO wanted FROM written;
    PERFORM 1 FROM schools s WHERE s.laestab IN (SELECT laestab FROM written) FOR KEY SHARE;
    GET DIAGNOSTICS locked = ROW_COUNT;
    IF locked < wanted THEN
        SELECT w.laestab INTO missing FROM written w
        WHERE NOT EXISTS (SELECT 1 FROM schools s WHERE s.laestab = w.laestab) LIMIT 1;
        RAISE foreign_key_violation USING
            MESSAGE = format('a mark names school %s, which is not stored', missing),
            TABLE = 'marks', COLUMN = 'laestab';
    END IF;

    SELECT COUNT(DISTINCT upn) INTO wanted FROM written;
    PERFORM 1 FROM pupils p WHERE p.upn IN (SELECT upn FROM written) FOR KEY SHARE;
    GET DIAGNOSTICS locked = ROW_COUNT;
    IF locked < wanted THEN
        SELECT w.upn INTO missing FROM written w
        WHERE NOT EXISTS (SELECT 1 FROM pupils p WHERE p.upn = w.upn) LIMIT 1;
        RAISE foreign_key_violation USING
            MESSAGE = format('a mark names pupil %s, who is not stored', missing),
            TABLE = 'marks', COLUMN = 'upn';
    END IF;

    SELECT COUNT(DISTINCT absence_report_id) INTO wanted FROM written;
    IF wanted > 0 THEN
        PERFORM 1 FROM absence_reports r
        WHERE r.id IN (SELECT absence_report_id FROM written) FOR KEY SHARE;
        GET DIAGNOSTICS locked = ROW_COUNT;
        IF locked < wanted THEN
            SELECT w.absence_report_id INTO missing FROM written w
            WHERE w.absence_report_id IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM absence_reports r WHERE r.id = w.absence_report_id)
            LIMIT 1;
            RAISE foreign_key_violation USING
                MESSAGE = format('a mark names absence report %s, which is not stored', missing),
                TABLE = 'marks', COLUMN = 'absence_report_id';
        END IF;
    END IF;
    RETURN NULL;
END $$;

-- A trigger with a transition table takes one event, so inserts and updates have one each.
CREATE TRIGGER marks_references_on_insert AFTER INSERT ON marks
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION marks_check_references();
CREATE TRIGGER marks_references_on_update AFTER UPDATE ON marks
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION marks_check_references();

CREATE FUNCTION effective_marks_check_version() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
DECLARE
    wanted bigint;
    locked bigint;
    missing bigint;
BEGIN
    SELECT COUNT(DISTINCT sequence) INTO wanted FROM written;
    PERFORM 1 FROM marks m WHERE m.sequence IN (SELECT sequence FROM written) FOR KEY SHARE;
    GET DIAGNOSTICS locked = ROW_COUNT;
    IF locked < wanted THEN
        SELECT w.sequence INTO missing FROM written w
        WHERE NOT EXISTS (SELECT 1 FROM marks m WHERE m.sequence = w.sequence) LIMIT 1;
        RAISE foreign_key_violation USING
            MESSAGE = format('an effective mark points at version %s, which is not stored', missing),
            TABLE = 'effective_marks', COLUMN = 'sequence';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER effective_marks_version_on_insert AFTER INSERT ON effective_marks
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION effective_marks_check_version();
CREATE TRIGGER effective_marks_version_on_update AFTER UPDATE ON effective_marks
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION effective_marks_check_version();

-- The parents' side. Schools, pupils and absence reports are deleted or renamed rarely, one
-- row at a time, so these run for each row. Versions are deleted in bulk by retention, so
-- that check runs once per statement.
CREATE FUNCTION marks_parent_still_referenced() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
DECLARE
    referenced boolean;
    key text;
    noun text;
BEGIN
    IF TG_TABLE_NAME = 'schools' THEN
        noun := 'school';
        key := OLD.laestab;
        SELECT EXISTS (SELECT 1 FROM marks WHERE laestab = key) INTO referenced;
    ELSIF TG_TABLE_NAME = 'pupils' THEN
        noun := 'pupil';
        key := OLD.upn;
        SELECT EXISTS (SELECT 1 FROM marks WHERE upn = key) INTO referenced;
    ELSE
        noun := 'absence report';
        key := OLD.id;
        SELECT EXISTS (SELECT 1 FROM marks WHERE absence_report_id = key) INTO referenced;
    END IF;
    IF referenced THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('%s %s is still named by stored marks', noun, key),
            TABLE = TG_TABLE_NAME;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER schools_named_by_marks_on_delete AFTER DELETE ON schools
    FOR EACH ROW EXECUTE FUNCTION marks_parent_still_referenced();
CREATE TRIGGER schools_named_by_marks_on_update AFTER UPDATE OF laestab ON schools
    FOR EACH ROW WHEN (OLD.laestab IS DISTINCT FROM NEW.laestab)
    EXECUTE FUNCTION marks_parent_still_referenced();
CREATE TRIGGER pupils_named_by_marks_on_delete AFTER DELETE ON pupils
    FOR EACH ROW EXECUTE FUNCTION marks_parent_still_referenced();
CREATE TRIGGER pupils_named_by_marks_on_update AFTER UPDATE OF upn ON pupils
    FOR EACH ROW WHEN (OLD.upn IS DISTINCT FROM NEW.upn)
    EXECUTE FUNCTION marks_parent_still_referenced();
CREATE TRIGGER absence_reports_named_by_marks_on_delete AFTER DELETE ON absence_reports
    FOR EACH ROW EXECUTE FUNCTION marks_parent_still_referenced();
CREATE TRIGGER absence_reports_named_by_marks_on_update AFTER UPDATE OF id ON absence_reports
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION marks_parent_still_referenced();

-- A version's sequence is never changed, but an update that changed it would leave its
-- effective mark behind as surely as a delete.
CREATE FUNCTION marks_version_still_effective() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
DECLARE
    kept bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT e.sequence INTO kept FROM effective_marks e
        WHERE e.sequence IN (SELECT sequence FROM removed) LIMIT 1;
    ELSE
        SELECT e.sequence INTO kept FROM effective_marks e
        WHERE e.sequence IN (SELECT sequence FROM removed EXCEPT SELECT sequence FROM kept_rows)
        LIMIT 1;
    END IF;
    IF FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('version %s is still an effective mark', kept),
            TABLE = 'marks', COLUMN = 'sequence';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER marks_still_effective_on_delete AFTER DELETE ON marks
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION marks_version_still_effective();
CREATE TRIGGER marks_still_effective_on_update AFTER UPDATE ON marks
    REFERENCING OLD TABLE AS removed NEW TABLE AS kept_rows
    FOR EACH STATEMENT EXECUTE FUNCTION marks_version_still_effective();
