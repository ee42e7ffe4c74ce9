//! The rules of school attendance in England, as a plain library with no I/O.
//!
//! - [`age`]: compulsory school age;
//! - [`calendar`]: a school's terms, register times, closures and time zone;
//! - [`history`]: the rule that picks a session's effective mark from its versions;
//! - [`codes`]: the one code table, with the statistical meaning and validity dates of every code;
//! - [`session`]: sessions, dates and academic years;
//! - [`stats`]: attendance statistics by the DfE rules;
//! - [`policy`]: the trust policy and the statutory framework, with their thresholds;
//! - [`ladder`]: the default escalation ladders per phase;
//! - [`phase`]: phases of education;
//! - [`school`]: school identifiers;
//! - [`source`]: where a version of a mark came from;
//! - [`upn`]: unique pupil numbers.

pub mod age;
pub mod calendar;
pub mod codes;
pub mod history;
pub mod ladder;
pub mod letters;
pub mod outcomes;
pub mod phase;
pub mod policy;
pub mod referrals;
pub mod school;
pub mod session;
pub mod source;
pub mod stats;
pub mod upn;

pub use codes::{Category, CodeError, CodeInfo};
pub use phase::Phase;
pub use policy::Policy;
pub use session::{Session, SessionDate};
pub use source::MarkSource;
pub use stats::Figures;
pub use upn::Upn;
