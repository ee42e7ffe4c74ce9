//! The services one rollcall process may host, and where a process finds the others.

use std::fmt;
use std::str::FromStr;

use rollcall_api::client::Channel;

/// A service a rollcall process can host. The embedded server hosts them all; in distributed
/// mode each process hosts the ones `rollcall serve --only` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceName {
    /// The attendance registers: pupils, calendars, marks and statistics.
    Registers,
    /// Policy decisions: thresholds, triggers and decisions on absence.
    Policy,
    /// Case management: cases, contacts, messages and letters.
    Cases,
    /// External referrals to the local authority and their packs.
    Referrals,
    /// The MIS adapter: the MIS sync API, imports, connectors, write-back and pack delivery.
    MisAdapter,
    /// The audit log's query service. Every process writes audit events itself.
    Audit,
}

impl ServiceName {
    /// Every service, in the order they start.
    pub const ALL: [ServiceName; 6] = [
        ServiceName::Registers,
        ServiceName::Policy,
        ServiceName::Cases,
        ServiceName::Referrals,
        ServiceName::MisAdapter,
        ServiceName::Audit,
    ];

    /// Returns the name used on the command line and in settings.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Registers => "registers",
            ServiceName::Policy => "policy",
            ServiceName::Cases => "cases",
            ServiceName::Referrals => "referrals",
            ServiceName::MisAdapter => "mis-adapter",
            ServiceName::Audit => "audit",
        }
    }

    /// Returns the other services this one calls.
    pub fn calls(self) -> &'static [ServiceName] {
        match self {
            ServiceName::Registers | ServiceName::Audit => &[],
            ServiceName::Policy => &[ServiceName::Registers, ServiceName::Cases],
            ServiceName::Cases => &[ServiceName::Registers, ServiceName::Policy],
            ServiceName::Referrals => &[
                ServiceName::Registers,
                ServiceName::Policy,
                ServiceName::Cases,
                ServiceName::MisAdapter,
            ],
            ServiceName::MisAdapter => &[ServiceName::Registers],
        }
    }

    /// Returns the command-line option that gives this service's address to the others.
    pub fn url_option(self) -> String {
        format!("--{}-url", self.as_str())
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service name that is not one of [`ServiceName::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown service {0:?}: expected one of registers, policy, cases, referrals, mis-adapter, audit"
)]
pub struct UnknownService(pub String);

impl FromStr for ServiceName {
    type Err = UnknownService;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        ServiceName::ALL
            .into_iter()
            .find(|name| name.as_str() == value.trim())
            .ok_or_else(|| UnknownService(value.to_owned()))
    }
}

/// Channels to every service a process calls: to itself for the services it hosts, and to the
/// configured addresses for the others.
#[derive(Debug, Clone)]
pub struct Peers {
    /// The registers service.
    pub registers: Channel,
    /// The policy service.
    pub policy: Channel,
    /// The cases service.
    pub cases: Channel,
    /// The referrals service.
    pub referrals: Channel,
    /// The MIS adapter and MIS sync services.
    pub mis_adapter: Channel,
}

impl Peers {
    /// Uses the same channel for every service, as in the embedded server.
    pub fn all(channel: Channel) -> Self {
        Peers {
            registers: channel.clone(),
            policy: channel.clone(),
            cases: channel.clone(),
            referrals: channel.clone(),
            mis_adapter: channel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in ServiceName::ALL {
            assert_eq!(name.as_str().parse::<ServiceName>(), Ok(name));
        }
        let error = "register"
            .parse::<ServiceName>()
            .expect_err("not a service");
        assert!(error.to_string().contains("\"register\""), "{error}");
        assert!(error.to_string().contains("mis-adapter"), "{error}");
    }

    #[test]
    fn no_service_calls_itself_or_the_audit_service() {
        for name in ServiceName::ALL {
            assert!(!name.calls().contains(&name), "{name}");
            assert!(!name.calls().contains(&ServiceName::Audit), "{name}");
        }
    }
}
