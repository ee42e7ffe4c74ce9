//! ImportRegister: a whole register (school, pupils, marks) applied in one transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_api::registers::v1::{
    ImportHeader, ImportMarks, ImportPupil, ImportRegisterRequest, ImportRegisterResponse,
    import_register_request::Item,
};
use rollcall_api::types::v1::MarkSource;
use rollcall_domain::{Session, Upn, codes};
use rollcall_runtime::grpc::{invalid_argument, storage_error};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use sqlx::QueryBuilder;
use tonic::{Status, Streaming};

use crate::FEED_LOCK_KEY;
use crate::convert::{laestab, phase_as_str, required_date, session_from_proto, source_as_str};

/// Rows per multi-row INSERT: 15 columns each stays well inside SQLite's limit of 32,766 bound
/// parameters.
const INSERT_CHUNK: usize = 1_000;

type SessionKey = (String, NaiveDate, Session);

/// A validated mark, ready to store.
struct NewMark {
    upn: String,
    date: NaiveDate,
    session: Session,
    code: String,
    minutes_late: i32,
    recorded_at: DateTime<Utc>,
}

/// The effective version of a session before the import.
struct Current {
    code: String,
    minutes_late: i32,
    recorded_at: DateTime<Utc>,
}

/// An on-roll window.
#[derive(Clone, Copy)]
struct Window {
    admission: NaiveDate,
    leaving: Option<NaiveDate>,
}

impl Window {
    fn contains(&self, date: NaiveDate) -> bool {
        date >= self.admission && self.leaving.is_none_or(|leaving| date <= leaving)
    }
}

/// Validates the header of an import.
pub(crate) fn check_header(header: &ImportHeader) -> Result<(), Status> {
    if header.request_id.trim().is_empty() {
        return Err(invalid_argument(
            "header.request_id",
            &header.request_id,
            "an idempotency key is required, such as the SHA-256 of the imported file",
        ));
    }
    let school = header.school.as_ref().ok_or_else(|| {
        invalid_argument(
            "header.school",
            "",
            "the school the register belongs to is required",
        )
    })?;
    laestab("header.school.laestab", &school.laestab)?;
    if school.name.trim().is_empty() {
        return Err(invalid_argument(
            "header.school.name",
            &school.name,
            "the school's name is required",
        ));
    }
    Ok(())
}

/// Reads the rest of the stream and applies it in one transaction.
pub(crate) async fn apply(
    db: &Db,
    header: ImportHeader,
    stream: &mut Streaming<ImportRegisterRequest>,
) -> Result<ImportRegisterResponse, Status> {
    let school = header.school.clone().unwrap_or_default();
    let laestab = school.laestab.trim().to_owned();
    let now = Utc::now();
    let source = source_as_str(MarkSource::try_from(header.source).unwrap_or(MarkSource::Import));
    let store_error = |error| storage_error("importing a register", error);

    with_db!(db, |pool| {
        let mut tx = pool.begin_write(FEED_LOCK_KEY).await.map_err(store_error)?;

        let applied: Option<i64> =
            sqlx::query_scalar("SELECT feed_cursor FROM imports WHERE request_id = $1")
                .bind(&header.request_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
        if applied.is_some() {
            let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(sequence), 0) FROM marks")
                .fetch_one(&mut *tx)
                .await
                .map_err(store_error)?;
            return Ok(ImportRegisterResponse {
                already_applied: true,
                feed_cursor: head,
                ..Default::default()
            });
        }

        sqlx::query(
            "INSERT INTO schools (laestab, name, phase, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (laestab) DO UPDATE SET name = excluded.name, phase = excluded.phase",
        )
        .bind(&laestab)
        .bind(school.name.trim())
        .bind(phase_as_str(school.phase))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;

        let mut next_sequence: i64 =
            sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(sequence), 0) FROM marks")
                .fetch_one(&mut *tx)
                .await
                .map_err(store_error)?
                + 1;
        let first_sequence = next_sequence;

        let mut response = ImportRegisterResponse::default();
        let mut windows: HashMap<String, Vec<Window>> = HashMap::new();
        let mut seen: HashSet<SessionKey> = HashSet::new();
        let mut mark_index = 0usize;
        let mut pupil_index = 0usize;

        while let Some(message) = stream.message().await? {
            match message.item {
                Some(Item::Header(_)) => {
                    return Err(invalid_argument(
                        "item",
                        "header",
                        "the header must be sent once, in the first message",
                    ));
                }
                None => continue,
                Some(Item::Pupil(import_pupil)) => {
                    let field = format!("pupils[{pupil_index}]");
                    pupil_index += 1;
                    let checked = check_pupil(&field, &import_pupil)?;

                    let existing: Option<(String, String, NaiveDate, String)> = sqlx::query_as(
                        "SELECT forename, surname, date_of_birth, sex FROM pupils WHERE upn = $1",
                    )
                    .bind(&checked.upn)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(store_error)?;
                    let details = (
                        checked.forename.clone(),
                        checked.surname.clone(),
                        checked.date_of_birth,
                        checked.sex.clone(),
                    );
                    match existing {
                        None => {
                            sqlx::query(
                                "INSERT INTO pupils (upn, forename, surname, date_of_birth, sex, updated_at) \
                                 VALUES ($1, $2, $3, $4, $5, $6)",
                            )
                            .bind(&checked.upn)
                            .bind(&checked.forename)
                            .bind(&checked.surname)
                            .bind(checked.date_of_birth)
                            .bind(&checked.sex)
                            .bind(now)
                            .execute(&mut *tx)
                            .await
                            .map_err(store_error)?;
                        }
                        Some(current) if current != details => {
                            sqlx::query(
                                "UPDATE pupils SET forename = $2, surname = $3, date_of_birth = $4, \
                                 sex = $5, updated_at = $6 WHERE upn = $1",
                            )
                            .bind(&checked.upn)
                            .bind(&checked.forename)
                            .bind(&checked.surname)
                            .bind(checked.date_of_birth)
                            .bind(&checked.sex)
                            .bind(now)
                            .execute(&mut *tx)
                            .await
                            .map_err(store_error)?;
                            response.pupils_updated += 1;
                        }
                        Some(_) => {}
                    }

                    let enrolments: Vec<(NaiveDate, Option<NaiveDate>, String)> = sqlx::query_as(
                        "SELECT admission_date, leaving_date, year_group FROM enrolments \
                         WHERE laestab = $1 AND upn = $2",
                    )
                    .bind(&laestab)
                    .bind(&checked.upn)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(store_error)?;
                    let covering = enrolments
                        .iter()
                        .find(|(admission, leaving, _)| {
                            Window {
                                admission: *admission,
                                leaving: *leaving,
                            }
                            .contains(checked.admission_date)
                        })
                        .cloned();
                    match covering {
                        Some((admission, _, year_group)) => {
                            if year_group != checked.year_group {
                                sqlx::query(
                                    "UPDATE enrolments SET year_group = $4 \
                                     WHERE laestab = $1 AND upn = $2 AND admission_date = $3",
                                )
                                .bind(&laestab)
                                .bind(&checked.upn)
                                .bind(admission)
                                .bind(&checked.year_group)
                                .execute(&mut *tx)
                                .await
                                .map_err(store_error)?;
                                response.pupils_updated += 1;
                            }
                        }
                        None => {
                            if enrolments.is_empty() {
                                response.pupils_added += 1;
                            }
                            sqlx::query(
                                "INSERT INTO enrolments (laestab, upn, admission_date, leaving_date, year_group) \
                                 VALUES ($1, $2, $3, NULL, $4)",
                            )
                            .bind(&laestab)
                            .bind(&checked.upn)
                            .bind(checked.admission_date)
                            .bind(&checked.year_group)
                            .execute(&mut *tx)
                            .await
                            .map_err(store_error)?;
                        }
                    }
                    let mut all: Vec<Window> = enrolments
                        .iter()
                        .map(|(admission, leaving, _)| Window {
                            admission: *admission,
                            leaving: *leaving,
                        })
                        .collect();
                    if !all.iter().any(|w| w.contains(checked.admission_date)) {
                        all.push(Window {
                            admission: checked.admission_date,
                            leaving: None,
                        });
                    }
                    windows.insert(checked.upn, all);
                }
                Some(Item::Marks(ImportMarks { marks })) => {
                    let mut batch = Vec::with_capacity(marks.len());
                    for mark in marks {
                        let field = format!("marks[{mark_index}]");
                        mark_index += 1;
                        let upn = mark.upn.trim().to_ascii_uppercase();
                        if !windows.contains_key(&upn) {
                            let known: Vec<(NaiveDate, Option<NaiveDate>)> = sqlx::query_as(
                                "SELECT admission_date, leaving_date FROM enrolments \
                                 WHERE laestab = $1 AND upn = $2",
                            )
                            .bind(&laestab)
                            .bind(&upn)
                            .fetch_all(&mut *tx)
                            .await
                            .map_err(store_error)?;
                            if known.is_empty() {
                                return Err(invalid_argument(
                                    &format!("{field}.upn"),
                                    &mark.upn,
                                    format!(
                                        "no pupil with this UPN is on roll at school {laestab}; send the pupil first"
                                    ),
                                ));
                            }
                            windows.insert(
                                upn.clone(),
                                known
                                    .into_iter()
                                    .map(|(admission, leaving)| Window { admission, leaving })
                                    .collect(),
                            );
                        }
                        let new_mark = check_mark(&field, &upn, &mark, &windows, now)?;
                        if !seen.insert((new_mark.upn.clone(), new_mark.date, new_mark.session)) {
                            return Err(invalid_argument(
                                &format!("{field}.date"),
                                &mark.date,
                                format!(
                                    "pupil {upn} has a second mark for the {} session of this date in the same import",
                                    new_mark.session
                                ),
                            ));
                        }
                        batch.push(new_mark);
                    }
                    if batch.is_empty() {
                        continue;
                    }

                    // The effective versions these marks may replace.
                    let first_date = batch.iter().map(|m| m.date).min().unwrap_or(NaiveDate::MIN);
                    let last_date = batch.iter().map(|m| m.date).max().unwrap_or(NaiveDate::MAX);
                    let upns: Vec<&str> = {
                        let mut upns: Vec<&str> = batch.iter().map(|m| m.upn.as_str()).collect();
                        upns.sort_unstable();
                        upns.dedup();
                        upns
                    };
                    let mut current: HashMap<(String, NaiveDate, String), Current> = HashMap::new();
                    for chunk in upns.chunks(INSERT_CHUNK) {
                        let mut query = QueryBuilder::new(
                            "SELECT m.upn, m.session_date, m.session, m.code, m.minutes_late, m.recorded_at \
                             FROM effective_marks e JOIN marks m ON m.sequence = e.sequence \
                             WHERE e.laestab = ",
                        );
                        query.push_bind(laestab.clone());
                        query.push(" AND e.session_date >= ").push_bind(first_date);
                        query.push(" AND e.session_date <= ").push_bind(last_date);
                        query.push(" AND e.upn IN (");
                        let mut list = query.separated(", ");
                        for upn in chunk {
                            list.push_bind((*upn).to_owned());
                        }
                        query.push(")");
                        let rows: Vec<(String, NaiveDate, String, String, i32, DateTime<Utc>)> =
                            query
                                .build_query_as()
                                .fetch_all(&mut *tx)
                                .await
                                .map_err(store_error)?;
                        for (upn, date, session, code, minutes_late, recorded_at) in rows {
                            current.insert(
                                (upn, date, session),
                                Current {
                                    code,
                                    minutes_late,
                                    recorded_at,
                                },
                            );
                        }
                    }

                    let mut versions = Vec::new();
                    for mark in batch {
                        let key = (
                            mark.upn.clone(),
                            mark.date,
                            mark.session.as_str().to_owned(),
                        );
                        let effective = match current.get(&key) {
                            Some(existing)
                                if existing.code == mark.code
                                    && existing.minutes_late == mark.minutes_late =>
                            {
                                response.marks_unchanged += 1;
                                continue;
                            }
                            Some(existing) => mark.recorded_at >= existing.recorded_at,
                            None => true,
                        };
                        versions.push((next_sequence, mark, effective));
                        next_sequence += 1;
                    }

                    for chunk in versions.chunks(INSERT_CHUNK) {
                        let mut insert = QueryBuilder::new(
                            "INSERT INTO marks (sequence, laestab, upn, session_date, session, code, \
                             minutes_late, source, source_name, reason, recorded_by, recorded_by_position, \
                             recorded_at, received_at, effective_when_stored) ",
                        );
                        insert.push_values(chunk, |mut row, (sequence, mark, effective)| {
                            row.push_bind(*sequence)
                                .push_bind(laestab.clone())
                                .push_bind(mark.upn.clone())
                                .push_bind(mark.date)
                                .push_bind(mark.session.as_str())
                                .push_bind(mark.code.clone())
                                .push_bind(mark.minutes_late)
                                .push_bind(source)
                                .push_bind(header.source_name.clone())
                                .push_bind(format!("Imported from {}", header.source_name))
                                .push_bind(header.recorded_by.clone())
                                .push_bind("")
                                .push_bind(mark.recorded_at)
                                .push_bind(now)
                                .push_bind(*effective);
                        });
                        insert
                            .build()
                            .execute(&mut *tx)
                            .await
                            .map_err(store_error)?;

                        let effective: Vec<_> = chunk
                            .iter()
                            .filter(|(_, _, effective)| *effective)
                            .collect();
                        if effective.is_empty() {
                            continue;
                        }
                        let mut upsert = QueryBuilder::new(
                            "INSERT INTO effective_marks (laestab, upn, session_date, session, sequence, recorded_at) ",
                        );
                        upsert.push_values(effective, |mut row, (sequence, mark, _)| {
                            row.push_bind(laestab.clone())
                                .push_bind(mark.upn.clone())
                                .push_bind(mark.date)
                                .push_bind(mark.session.as_str())
                                .push_bind(*sequence)
                                .push_bind(mark.recorded_at);
                        });
                        upsert.push(
                            " ON CONFLICT (laestab, upn, session_date, session) DO UPDATE \
                             SET sequence = excluded.sequence, recorded_at = excluded.recorded_at",
                        );
                        upsert
                            .build()
                            .execute(&mut *tx)
                            .await
                            .map_err(store_error)?;
                    }
                    response.marks_recorded += i32::try_from(versions.len()).unwrap_or(i32::MAX);
                }
            }
        }

        let feed_cursor = if next_sequence > first_sequence {
            next_sequence - 1
        } else {
            first_sequence - 1
        };
        sqlx::query(
            "INSERT INTO imports (request_id, laestab, source_name, marks_recorded, feed_cursor, applied_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&header.request_id)
        .bind(&laestab)
        .bind(&header.source_name)
        .bind(response.marks_recorded)
        .bind(feed_cursor)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        response.feed_cursor = feed_cursor;
        Ok(response)
    })
}

struct CheckedPupil {
    upn: String,
    forename: String,
    surname: String,
    date_of_birth: NaiveDate,
    sex: String,
    admission_date: NaiveDate,
    year_group: String,
}

fn check_pupil(field: &str, import: &ImportPupil) -> Result<CheckedPupil, Status> {
    let pupil = import.pupil.clone().unwrap_or_default();
    let upn = Upn::parse(&pupil.upn).map_err(|error| {
        invalid_argument(&format!("{field}.upn"), &pupil.upn, error.to_string())
    })?;
    let required = |name: &str, value: &str| -> Result<String, Status> {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            Err(invalid_argument(
                &format!("{field}.{name}"),
                value,
                format!("pupil {upn} has no {name}"),
            ))
        } else {
            Ok(trimmed.to_owned())
        }
    };
    Ok(CheckedPupil {
        forename: required("forename", &pupil.forename)?,
        surname: required("surname", &pupil.surname)?,
        date_of_birth: required_date(&format!("{field}.date_of_birth"), &pupil.date_of_birth)?,
        sex: required("sex", &pupil.sex)?,
        admission_date: required_date(&format!("{field}.admission_date"), &import.admission_date)?,
        year_group: required("year_group", &import.year_group)?,
        upn: upn.to_string(),
    })
}

fn check_mark(
    field: &str,
    upn: &str,
    mark: &rollcall_api::registers::v1::Mark,
    windows: &HashMap<String, Vec<Window>>,
    now: DateTime<Utc>,
) -> Result<NewMark, Status> {
    let date = required_date(&format!("{field}.date"), &mark.date)?;
    let session = session_from_proto(&format!("{field}.session"), mark.session)?;
    let code = mark.code.trim();
    codes::lookup_on(code, date).map_err(|error| {
        invalid_argument(
            &format!("{field}.code"),
            &mark.code,
            format!("{error} (pupil {upn}, {date} {session})"),
        )
    })?;
    let on_roll = windows
        .get(upn)
        .is_some_and(|list| list.iter().any(|window| window.contains(date)));
    if !on_roll {
        return Err(invalid_argument(
            &format!("{field}.date"),
            &mark.date,
            format!("pupil {upn} is not on roll at this school on {date}"),
        ));
    }
    if mark.minutes_late < 0 {
        return Err(invalid_argument(
            &format!("{field}.minutes_late"),
            &mark.minutes_late.to_string(),
            "minutes late cannot be negative",
        ));
    }
    let recorded_at = match &mark.recorded_at {
        Some(at) => DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).unwrap_or(0))
            .ok_or_else(|| {
                invalid_argument(
                    &format!("{field}.recorded_at"),
                    &at.seconds.to_string(),
                    "not a valid time",
                )
            })?,
        None => now,
    };
    Ok(NewMark {
        upn: upn.to_owned(),
        date,
        session,
        code: code.to_owned(),
        minutes_late: mark.minutes_late,
        recorded_at,
    })
}
