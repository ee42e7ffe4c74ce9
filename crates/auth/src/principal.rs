//! Who is calling: the identity a verified token, the development mode or another service gives.

use std::collections::BTreeSet;
use std::fmt;

use crate::role::Role;

/// The schools a caller may see and change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schools {
    /// Every school in the trust.
    Trust,
    /// Only these schools, by LAESTAB.
    Granted(BTreeSet<String>),
}

impl Schools {
    /// True when the caller may see or change records of the school `laestab`.
    pub fn includes(&self, laestab: &str) -> bool {
        match self {
            Schools::Trust => true,
            Schools::Granted(schools) => schools.contains(laestab),
        }
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A bearer token from the configured identity provider.
    Token {
        /// The token's issuer.
        issuer: String,
    },
    /// No credential: the server runs with `--dev` on a loopback address.
    Development,
    /// Another rollcall service of this deployment.
    Internal,
    /// Another rollcall service in another process, by the client certificate it presented,
    /// which the services' CA signed.
    ServiceCertificate,
}

/// An authenticated caller. Handlers find it in the request's extensions.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    /// A stable id for the caller: the token's subject. Never a name.
    pub subject: String,
    /// The caller's roles.
    pub roles: BTreeSet<Role>,
    /// The schools the caller may see and change.
    pub schools: Schools,
    /// For a local authority officer, the three-digit code of their authority.
    pub local_authority: Option<String>,
    /// How the caller proved who they are.
    pub credential: Credential,
}

impl Principal {
    /// The identity other rollcall services use.
    pub fn internal() -> Self {
        Principal {
            subject: "rollcall-service".to_owned(),
            roles: BTreeSet::from([Role::Service]),
            schools: Schools::Trust,
            local_authority: None,
            credential: Credential::Internal,
        }
    }

    /// Returns the identity of another rollcall process, named by its client certificate.
    pub fn service_certificate(name: String) -> Self {
        Principal {
            subject: name,
            roles: BTreeSet::from([Role::Service]),
            schools: Schools::Trust,
            local_authority: None,
            credential: Credential::ServiceCertificate,
        }
    }

    /// True for rollcall's own services, in this process or another.
    pub fn is_service(&self) -> bool {
        matches!(
            self.credential,
            Credential::Internal | Credential::ServiceCertificate
        )
    }

    /// The identity every caller gets with `--dev`: every role, the services' own included,
    /// trust-wide, so a demonstration can make every call.
    pub fn development() -> Self {
        Principal {
            subject: "dev".to_owned(),
            roles: Role::ALL.into_iter().collect(),
            schools: Schools::Trust,
            local_authority: None,
            credential: Credential::Development,
        }
    }

    /// True when the caller is a person rather than a service or an MIS, so their reads of a
    /// pupil's record are audited.
    pub fn is_person(&self) -> bool {
        self.roles.iter().any(|role| role.is_person())
    }

    /// The caller's roles, comma-separated, for messages and logs.
    pub fn role_names(&self) -> String {
        let names: Vec<&str> = self.roles.iter().map(|role| role.as_str()).collect();
        names.join(", ")
    }
}

// Written by hand so that a log line with a principal shows ids and roles only.
impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("subject", &self.subject)
            .field("roles", &self.role_names())
            .field("schools", &self.schools)
            .field("local_authority", &self.local_authority)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granted_schools_limit_the_caller() {
        let schools = Schools::Granted(BTreeSet::from(["9192001".to_owned()]));
        assert!(schools.includes("9192001"));
        assert!(!schools.includes("9192002"));
        assert!(Schools::Trust.includes("9192002"));
    }

    #[test]
    fn development_has_every_role() {
        let dev = Principal::development();
        assert_eq!(dev.roles.len(), Role::ALL.len());
        assert!(dev.is_person());
        assert!(!Principal::internal().is_person());
    }
}
