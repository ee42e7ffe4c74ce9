//! The caller of a request, and the checks a handler makes on the schools, pupils and local
//! authorities the request touches. Each check also notes what was touched, for the audit
//! record the layer writes when the call ends.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tonic::Status;

use crate::principal::{Principal, Schools};

/// The schools and pupils one call touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// LAESTABs.
    pub schools: BTreeSet<String>,
    /// UPNs.
    pub pupils: BTreeSet<String>,
}

/// The caller of one request. The layer puts it in the request's extensions; handlers take it
/// with [`caller`].
#[derive(Debug, Clone)]
pub struct Caller {
    principal: Principal,
    touched: Arc<Mutex<Touched>>,
}

/// The caller of `request`. A request that did not pass through the layer has no caller and
/// is refused, so a service wired without authentication fails closed.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| {
            tracing::error!("A request reached a handler without passing the authentication layer");
            Status::unauthenticated("the caller is unknown: the server is not checking credentials")
        })
}

impl Caller {
    pub(crate) fn new(principal: Principal) -> Self {
        Caller {
            principal,
            touched: Arc::new(Mutex::new(Touched::default())),
        }
    }

    /// Who is calling.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// What the call has touched so far.
    pub fn touched(&self) -> Touched {
        self.touched
            .lock()
            .map(|touched| touched.clone())
            .unwrap_or_default()
    }

    fn note(&self, school: Option<&str>, pupil: Option<&str>) {
        if let Ok(mut touched) = self.touched.lock() {
            if let Some(school) = school.filter(|school| !school.is_empty()) {
                touched.schools.insert(school.to_owned());
            }
            if let Some(pupil) = pupil.filter(|pupil| !pupil.is_empty()) {
                touched.pupils.insert(pupil.to_owned());
            }
        }
    }

    /// Allows the call when the caller may see and change the school `laestab`.
    pub fn school(&self, laestab: &str) -> Result<(), Status> {
        self.note(Some(laestab), None);
        if self.principal.schools.includes(laestab) {
            return Ok(());
        }
        tracing::warn!(subject = %self.principal.subject, laestab, "Refused a call for a school the caller is not granted");
        Err(Status::permission_denied(format!(
            "{} is not granted school {laestab}{}: ask trust IT to grant it",
            self.principal.subject,
            self.granted_list()
        )))
    }

    /// Allows the call when the caller may see and change the records of the pupil `upn` at
    /// the school `laestab`.
    pub fn pupil(&self, upn: &str, laestab: &str) -> Result<(), Status> {
        self.note(None, Some(upn));
        self.school(laestab)
    }

    /// Notes pupils a call read, for the audit record, once their schools were checked.
    pub fn read_pupils<'a>(&self, upns: impl IntoIterator<Item = &'a str>) {
        for upn in upns {
            self.note(None, Some(upn));
        }
    }

    /// Allows a call that reaches across every school, such as a list with no school named,
    /// only for callers who see the whole trust.
    pub fn trust(&self, what: &str) -> Result<(), Status> {
        if self.principal.schools == Schools::Trust {
            return Ok(());
        }
        tracing::warn!(subject = %self.principal.subject, what, "Refused a trust-wide call");
        Err(Status::permission_denied(format!(
            "{what} across the trust needs a trust-wide role: name one of your schools{}",
            self.granted_list()
        )))
    }

    /// The schools the caller may see, or `None` for the whole trust: for lists that the
    /// caller's schools narrow.
    pub fn visible_schools(&self) -> Option<&BTreeSet<String>> {
        match &self.principal.schools {
            Schools::Trust => None,
            Schools::Granted(schools) => Some(schools),
        }
    }

    /// Allows a local authority officer only the records of their own authority, given by its
    /// three-digit code; everyone else the rule let through is allowed.
    pub fn local_authority(&self, code: &str) -> Result<(), Status> {
        let officer = self
            .principal
            .roles
            .contains(&crate::role::Role::LocalAuthorityAttendanceOfficer);
        if !officer || self.principal.local_authority.as_deref() == Some(code) {
            return Ok(());
        }
        tracing::warn!(subject = %self.principal.subject, local_authority = code, "Refused a record of another local authority");
        Err(Status::permission_denied(format!(
            "{} works for local authority {}, and this record was sent to authority {code}",
            self.principal.subject,
            self.principal
                .local_authority
                .as_deref()
                .unwrap_or("(none)")
        )))
    }

    /// True when the caller is a local authority officer and nothing else, whose referrals are
    /// chosen by authority rather than by school.
    pub fn is_local_authority_only(&self) -> bool {
        self.principal
            .roles
            .iter()
            .all(|role| *role == crate::role::Role::LocalAuthorityAttendanceOfficer)
    }

    fn granted_list(&self) -> String {
        match &self.principal.schools {
            Schools::Trust => String::new(),
            Schools::Granted(schools) if schools.is_empty() => {
                " (no schools are granted)".to_owned()
            }
            Schools::Granted(schools) => {
                let list: Vec<&str> = schools.iter().map(String::as_str).collect();
                format!(" (granted: {})", list.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::Credential;
    use crate::role::Role;

    fn teacher() -> Caller {
        Caller::new(Principal {
            subject: "t-1".to_owned(),
            roles: BTreeSet::from([Role::ClassTeacherOrTutor]),
            schools: Schools::Granted(BTreeSet::from(["9192001".to_owned()])),
            local_authority: None,
            credential: Credential::Development,
        })
    }

    #[test]
    fn a_school_role_sees_only_its_schools() {
        let caller = teacher();
        assert!(caller.school("9192001").is_ok());
        let refused = caller.school("9192002").expect_err("another school");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("9192002"),
            "{}",
            refused.message()
        );
        assert!(
            refused.message().contains("granted: 9192001"),
            "{}",
            refused.message()
        );
        assert!(caller.trust("Listing cases").is_err());
        assert!(
            Caller::new(Principal::internal())
                .trust("Listing cases")
                .is_ok()
        );
    }

    #[test]
    fn checks_note_what_was_touched() {
        let caller = teacher();
        caller.pupil("A123456789012", "9192001").expect("granted");
        let _ = caller.pupil("B123456789012", "9192002");
        let touched = caller.touched();
        assert_eq!(touched.schools.len(), 2);
        assert!(touched.pupils.contains("B123456789012"));
    }

    #[test]
    fn a_local_authority_officer_sees_only_their_authority() {
        let officer = Caller::new(Principal {
            subject: "la-1".to_owned(),
            roles: BTreeSet::from([Role::LocalAuthorityAttendanceOfficer]),
            schools: Schools::Granted(BTreeSet::new()),
            local_authority: Some("919".to_owned()),
            credential: Credential::Development,
        });
        assert!(officer.local_authority("919").is_ok());
        assert!(officer.local_authority("201").is_err());
        assert!(officer.is_local_authority_only());
        assert!(teacher().local_authority("201").is_ok());
    }
}
