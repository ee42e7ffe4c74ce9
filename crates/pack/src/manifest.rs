//! The manifest of a referral pack, format version 1.
//!
//! The types read any manifest whose fields they know and ignore members they do not, so a
//! manifest from a later minor revision of version 1 still reads. The JSON Schema in
//! `schema/manifest-v1.schema.json` is the strict definition.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// The value of the manifest's `format` member.
pub const FORMAT: &str = "rollcall-referral-pack";

/// The version of the pack format that this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The signature algorithm named in `signature.algorithm`.
pub const SIGNATURE_ALGORITHM: &str = "ed25519";

/// The contents of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`]. [`write_pack`](crate::write_pack) sets it.
    pub format: String,
    /// Always [`FORMAT_VERSION`] for packs this crate writes. [`write_pack`](crate::write_pack)
    /// sets it.
    pub pack_format_version: u32,
    /// The pack's identifier, unique within the trust that made it.
    pub pack_id: String,
    /// When the pack was made.
    pub created_at: DateTime<Utc>,
    /// The program and version that made the pack, such as `rollcall 0.1.0`.
    pub generator: String,
    pub referral: Referral,
    pub school: School,
    pub pupil: Pupil,
    /// The parents or carers named in the referral. rollcall fills this for penalty notice and
    /// legal action referrals and leaves it empty for the other kinds.
    pub parents: Vec<Parent>,
    pub policy: Policy,
    pub figures: Figures,
    /// The sessions that counted towards the policy's threshold.
    pub threshold_sessions: Vec<ThresholdSession>,
    /// The conditions the trust's policy requires before this referral.
    pub prerequisites: Vec<Prerequisite>,
    /// The data files in the archive. [`write_pack`](crate::write_pack) fills this list.
    pub files: Vec<FileEntry>,
    /// The Ed25519 signature. [`write_pack`](crate::write_pack) fills it.
    pub signature: Signature,
}

/// The referral that the pack carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    /// The referral's identifier in rollcall.
    pub id: String,
    pub kind: ReferralKind,
    /// The school's own reference for the referral.
    pub reference: String,
    pub created_at: DateTime<Utc>,
    /// When the school submitted the referral, or `None` while it is a draft.
    pub submitted_at: Option<DateTime<Utc>>,
    /// A decision to refer although a prerequisite was not met, or `None`.
    #[serde(rename = "override")]
    pub override_: Option<Override>,
}

/// The kind of referral, as the local authority's attendance team classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferralKind {
    AttendanceOfficer,
    PenaltyNotice,
    LegalAction,
    UnauthorisedAbsenceReturn,
    SicknessReturn,
    NewPupilReturn,
    DeletionReturn,
}

impl ReferralKind {
    /// Returns whether a referral of this kind names the parents (penalty notices and legal
    /// action).
    pub fn names_parents(self) -> bool {
        matches!(self, Self::PenaltyNotice | Self::LegalAction)
    }
}

/// A decision by a named member of staff to refer although a prerequisite was not met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// The name of the person who made the decision.
    pub by: String,
    /// Their role, such as `headteacher`.
    pub role: String,
    /// Their reason for referring.
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// The school that makes the referral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct School {
    /// The seven-digit LAESTAB: the LA number followed by the establishment number.
    pub laestab: String,
    /// The three-digit local authority number.
    pub la_number: String,
    /// The four-digit establishment number.
    pub establishment_number: String,
    pub name: String,
}

/// The pupil the referral is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pupil {
    /// The unique pupil number: 13 characters, permanent or temporary.
    pub upn: String,
    pub forename: String,
    pub surname: String,
    pub date_of_birth: Option<NaiveDate>,
    /// The sex as the school's MIS records it, such as `M` or `F`.
    pub sex: String,
    /// The National Curriculum year group, such as `R`, `7` or `11`.
    pub year_group: String,
}

/// A parent or carer named in a penalty notice or legal action referral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    pub name: String,
    /// Their relationship to the pupil, such as `mother` or `carer`.
    pub relationship: String,
    /// Whether they have parental responsibility for the pupil.
    pub parental_responsibility: bool,
    /// The address lines, without the postcode.
    pub address: Vec<String>,
    pub postcode: String,
    pub email: Option<String>,
    pub phone: Option<String>,
}

/// The trust's attendance policy rule that the referral relies on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub id: String,
    pub title: String,
    /// The clause that sets the rule, for example "4.10".
    pub clause: String,
    /// The policy clauses that the referral relies on, as written in the policy.
    pub clauses: Vec<String>,
    /// The identifier of the rule that was met.
    pub rule: String,
    /// The number of sessions at which the rule is met.
    pub threshold_sessions: u32,
    /// The period the rule counts over, or `None` when it counts over the whole period of the
    /// figures.
    pub window: Option<DateRange>,
}

/// An inclusive range of dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DateRange {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

/// The pupil's attendance figures over the period from `from` to `as_of`, both inclusive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub from: NaiveDate,
    pub as_of: NaiveDate,
    pub possible_sessions: u32,
    pub attended_sessions: u32,
    pub authorised_absence_sessions: u32,
    pub unauthorised_absence_sessions: u32,
    /// Unauthorised sessions counted towards the rule within its window.
    pub unauthorised_sessions_in_window: u32,
    /// Attended sessions as a percentage of possible sessions, from 0 to 100.
    pub attendance_percent: f64,
    /// Whether the pupil is persistently absent (10% or more of sessions missed).
    pub persistent_absence: bool,
    /// Whether the pupil is severely absent (50% or more of sessions missed).
    pub severe_absence: bool,
}

/// One session that counted towards the threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThresholdSession {
    pub date: NaiveDate,
    pub session: Session,
    /// The attendance code recorded for the session, such as `O` or `G`.
    pub code: String,
}

/// The morning or afternoon session of a school day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Session {
    #[serde(rename = "AM")]
    Am,
    #[serde(rename = "PM")]
    Pm,
}

/// A condition that the trust's policy requires before this kind of referral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prerequisite {
    pub name: String,
    pub met: bool,
    /// The evidence that the condition was met, or the reason it was not.
    pub evidence: String,
    /// Whether the referral went ahead under the override although this was not met.
    pub overridden: bool,
}

/// A data file in the archive, as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FileEntry {
    /// The entry name in the archive, such as `attendance.csv` or `letters/first-warning.pdf`.
    pub name: String,
    pub media_type: String,
    /// The SHA-256 of the file's bytes, as 64 lowercase hex digits.
    pub sha256: String,
    /// The file's size in bytes.
    pub bytes: u64,
}

/// The signature over the manifest's canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Signature {
    /// Always [`SIGNATURE_ALGORITHM`].
    pub algorithm: String,
    /// The first 16 hex digits of the SHA-256 of the raw 32-byte public key.
    pub key_id: String,
    /// The raw 32-byte public key, in standard base64 with padding.
    pub public_key: String,
    /// The 64-byte signature, in standard base64 with padding.
    pub value: String,
}
